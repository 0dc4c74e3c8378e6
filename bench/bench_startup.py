"""Start-up of eval.py, measured in one run: seconds from launching the process to its first batch
entering the model, with the model built as now (`skip_init`: no random initialisation on the meta
device) and as before (the same build with the meta-device initialisation, forced in the child
process by replacing `skip_init` with a no-op). Each launch is a fresh process (the cost is paid once
per process: the first `normal_` on the meta device imports torch's decompositions); the variants are
interleaved, best of `--repeat`.

The world: a random Llama-2-shaped backbone in Meta's format (dim 512, 8 layers, the real 32k
tokenizer), a NExT-QA val file of real questions from the fixtures and random features; eval.py runs
as the scripts run it (CPU fp32 here).

  python bench/bench_startup.py

Measured on the shared 2-core CPU machine (fp32, dim 512 x 8 layers): see the README's Speed table.
"""
import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from toyworld.fixtures import add_argument as add_fixtures_argument  # noqa: E402

VARIANTS = ("before", "after")  # meta-device init as before / skip_init


def write_world(root: Path, fixtures: str, dim: int = 512, layers: int = 8, heads: int = 8, n_questions: int = 16):
    """A Meta-format backbone under root/llama2/bench and NExT-QA val data under root/data."""
    import torch
    from toyworld.tiny import make_tiny_llama
    make_tiny_llama(root / "llama2", Path(fixtures) / "llama2" / "tokenizer.model", dim=dim, n_layers=layers,
                    n_heads=heads, name="bench", multiple_of=64)
    with open(Path(fixtures) / "nextqa" / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n_questions]
    data = root / "data" / "nextqa"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "val.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    g = torch.Generator().manual_seed(0)
    torch.save({r["video"]: torch.randn(16, 768, generator=g).half() for r in rows}, data / "clipvitl14.pth")


def eval_args(root: Path, out: Path) -> list:
    return ["--model", "bench", "--llama2", "--llama_model_path", str(root / "llama2"), "--dataset", "nextqa",
            "--data_root", str(root / "data"), "--max_feats", "10", "--adapter_len", "50", "--batch_size", "8",
            "--precision", "fp32", "--device", "cpu", "--num_workers", "0", "--output_dir", str(out)]


def child(variant: str, argv: list):
    """Run eval.py with `argv` in this process; print the wall-clock time when the first batch enters
    the model, then exit."""
    import llama.adapter
    if variant == "before":
        llama.adapter.skip_init = contextlib.nullcontext  # the build as it was: random init on `meta`
    run_adapted = llama.adapter.TOPA.run_adapted

    def first_batch(*a, **kw):
        print(json.dumps({"first_batch": time.time()}), flush=True)
        os._exit(0)
        return run_adapted(*a, **kw)

    llama.adapter.TOPA.run_adapted = first_batch
    import eval as eval_script
    eval_script.main(eval_script.get_args(argv))
    sys.exit("eval.py finished without running a batch")


def startup_seconds(variant: str, argv: list) -> float:
    """Seconds from launching a fresh process to its first batch (eval.py with `argv`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--", *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('{"first_batch"')]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"start-up child ({variant}) failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])["first_batch"] - t0


def measure(root: Path, repeat: int) -> dict:
    """{variant: best seconds to the first batch}, variants interleaved; also `torch_import` (seconds of
    `python -c "import torch"`, paid by both)."""
    times = {v: [] for v in VARIANTS}
    times["torch_import"] = []
    for i in range(repeat):
        for v in VARIANTS:
            times[v].append(startup_seconds(v, eval_args(root, root / f"out_{v}_{i}")))
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times["torch_import"].append(time.time() - t0)
    return {k: min(ts) for k, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(p)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.rest)
    with tempfile.TemporaryDirectory() as tmp:
        write_world(Path(tmp), args.fixtures)
        best = measure(Path(tmp), args.repeat)
    print(f"eval.py start-up to the first batch (NExT-QA, dim 512 x 8 layers, CPU fp32), best of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  before (random init on meta): {best['before']:.2f} s")
    print(f"  after  (skip_init):           {best['after']:.2f} s   ({best['before'] - best['after']:.2f} s less; "
          f"importing torch alone: {best['torch_import']:.2f} s)")
    return best


if __name__ == "__main__":
    main()
