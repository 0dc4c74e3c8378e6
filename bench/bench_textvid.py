"""TextVid at scale: building the dataset and feeding DataLoader workers, the index (`dataloader/textvid/`)
against the earlier reader (the whole json as Python objects; kept in tests/textvid_reference.py) and the
original code's `json.load`, measured in one run.

The data: a synthetic TextVid of the released proportions (`write_textvid`): 5-15 frames of 1 caption + 1-3
object entries, 4-6 five-option QAs with open answers, a 60-100 word summary, a pickled fp16 tensor of
features per tideo (20K tideos: ~115 MiB of JSON, ~0.9 GiB of features). Each variant runs in a fresh
process:

  json_load   the original's `json.load` of textvid.json (seconds, PSS growth)
  today       the earlier TextVidDataset: built (seconds, PSS growth of the rank), then `--items` items through
              `--workers` DataLoader workers (items/s; the workers' PSS growth from their first batch on)
  build       the new TextVidDataset where no index exists yet (the first run: it builds the index)
  new         the new TextVidDataset with its index present, then the same items as `today`
  packed      (--pack) the same with the features packed (`python -m dataloader.textvid pack`)

PSS (proportional set size, /proc/PID/smaps_rollup) counts shared pages once over the processes sharing
them; "anon" is its anonymous part (Python objects, copied on write in the workers), the rest is file pages
mapped by the process (the index's page cache, shared by every rank and worker of the machine). Items/s
depends on what else the machine runs; the workers' CPU time per item (/proc/PID/stat) much less. The items
are the recipe's (`--answer_balance --video_caption --openvqa`, half the batches captions), batch 16, the
real Llama-2 tokenizer. Start-up and rank memory are also given at 721K tideos (x 721000 / N: linear, an
upper bound for what does not grow with N); `--tideos 721000` measures them (~40 GiB of disk, 70 GiB with
--pack, ~10 GiB of memory for the earlier reader; 25 min on 2 cores, 6 of them writing the data).

  python bench/bench_textvid.py --tideos 20000 [--root DIR] [--pack]

`--root DIR` keeps the synthetic data in DIR (written when DIR/textvid/textvid.json is absent), or reads a
real TextVid there. Measured numbers: the README's "TextVid at scale".
"""
import argparse
import gc
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from toyworld.fixtures import add_argument as add_fixtures_argument  # noqa: E402

VARIANTS = ("json_load", "today", "build", "new", "packed")
PAPER_TIDEOS = 721_000


# ---- the data ----

def write_textvid(folder: Path, n: int, seed: int = 0):
    """`folder`/textvid.json and features/<idx>.pkl: n tideos of the released proportions (module docstring)."""
    import random

    import numpy as np
    import torch
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(4000)]

    def words(lo, hi):
        return " ".join(rng.choices(vocab, k=rng.randint(lo, hi)))

    g = np.random.default_rng(seed)
    pool = g.standard_normal((8192, 768), dtype=np.float32)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float16)
    (folder / "features").mkdir(parents=True, exist_ok=True)
    out = open(folder / "textvid.json", "w")  # json.dump's bytes, a tideo at a time (721K do not fit in memory)
    out.write("[")
    for i in range(n):
        frames = [{"caption": words(12, 20), **{f"object {k + 1}": words(8, 14) for k in range(rng.randint(1, 3))}}
                  for _ in range(rng.randint(5, 15))]
        qas = []
        for _ in range(rng.randint(4, 6)):
            options = [words(2, 6) for _ in range(5)]
            if rng.random() < 0.1:
                options[4] = "both A and B"
            qas.append({"question": words(8, 14) + "?", "options": options, "answer": rng.choice("ABCDE"),
                        "answer_open_ended": words(8, 16)})
        idx = f"tv{i:07d}"
        out.write((", " if i else "") + json.dumps({"idx": idx, "frames": frames, "QAs": qas,
                                                     "global_video_caption": words(60, 100)}))
        rows = sum(len(f) for f in frames)
        start = rng.randrange(len(pool) - rows)
        with open(folder / "features" / f"{idx}.pkl", "wb") as f:
            pickle.dump(torch.from_numpy(pool[start:start + rows].copy()), f)
    out.write("]")
    out.close()


# ---- measuring, in a child process ----

def pss(pid="self") -> dict:
    """{'pss': MiB, 'anon': MiB} of a process (/proc/PID/smaps_rollup)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Pss_Anon"):
                out["pss" if key == "Pss" else "anon"] = int(rest.split()[0]) / 1024
    return out


def index_pss(pid) -> float:
    """MiB: the PSS of a process's mappings of the TextVid index file (/proc/PID/smaps)."""
    total, mapping = 0.0, ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if " " in key:                              # a mapping's header line: address range, ..., path
                mapping = line.split()[-1] if len(line.split()) > 5 else ""
            elif key == "Pss" and mapping.endswith(".index.arrow"):
                total += int(rest.split()[0]) / 1024
    return total


def cpu_seconds(pid) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record_start(path: str, worker_id: int):
    """DataLoader worker_init_fn: the worker's PSS before its first item."""
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **pss()}) + "\n")


def feed(ds, items: int, workers: int, batch_size: int = 16) -> dict:
    """items/s through `workers` DataLoader workers, and their PSS growth (summed over the workers) from their
    first batch and from their start to the end of `items` items."""
    import functools

    import torch
    from dataloader.train_batches import TaskBatchSampler, TrainCollate
    fd, starts = tempfile.mkstemp(prefix="bench_textvid_workers.")
    os.close(fd)
    sampler = TaskBatchSampler(len(ds), batch_size, seed=0, caption_prob=0.5)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=TrainCollate(), num_workers=workers,
                                         worker_init_fn=functools.partial(_record_start, starts))
    it = iter(loader)
    next(it)
    kids = multiprocessing.active_children()
    first = {p.pid: pss(p.pid) for p in kids}
    cpu0 = sum(cpu_seconds(p.pid) for p in kids)
    t0, n = time.time(), 0
    while n < items:
        n += next(it).n_items
    seconds = time.time() - t0
    cpu = sum(cpu_seconds(p.pid) for p in kids) - cpu0
    end = {p.pid: pss(p.pid) for p in kids}
    index = sum(index_pss(pid) for pid in end)
    del it
    with open(starts) as f:
        start = {r["pid"]: r for r in map(json.loads, f)}
    os.unlink(starts)

    def growth(since, key):
        return sum(end[pid][key] - since[pid][key] for pid in end)
    return {"items_per_s": n / seconds, "worker_cpu_ms": cpu / n * 1000, "workers_pss_growth": growth(first, "pss"),
            "workers_anon_growth": growth(first, "anon"), "workers_pss_from_start": growth(start, "pss"),
            "workers_anon_from_start": growth(start, "anon"),
            "workers_index_pss": index}


def child(variant: str, root: Path, fixtures: str, items: int, workers: int) -> dict:
    import torch  # noqa: F401  (what a training process holds before it builds its dataset)
    from dataloader.base import load_json  # noqa: F401
    from text.prompts import PromptBuilder
    from text.tokenizer import load_tokenizer
    json_path = root / "textvid" / "textvid.json"
    builder = PromptBuilder(load_tokenizer(Path(fixtures) / "llama2" / "tokenizer.model"), 10)
    gc.collect()
    m0, t0, c0 = pss(), time.time(), time.process_time()
    if variant == "json_load":
        with open(json_path) as f:
            obj = json.load(f)
    else:
        if variant == "today":
            sys.path.insert(0, str(REPO / "tests"))
            from textvid_reference import ReferenceTextVidDataset as Dataset
        else:
            from dataloader.textvid import TextVidDataset as Dataset
        obj = Dataset(root, builder, seed=0, answer_balance=True, video_caption=True, openvqa=True)
    seconds, cpu = time.time() - t0, time.process_time() - c0
    gc.collect()
    m1 = pss()
    out = {"startup_s": seconds, "startup_cpu_s": cpu, "rank_pss": m1["pss"] - m0["pss"],
           "rank_anon": m1["anon"] - m0["anon"]}
    if variant in ("today", "new", "packed"):
        out.update(feed(obj, items, workers), tideos=len(obj))
    return out


def run_child(variant: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", variant, "--root", str(args.root), "--fixtures", args.fixtures,
           "--items", str(args.items), "--workers", str(args.workers)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed: {out.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---- the run ----

def prepare(args):
    """The data (written if absent), its page cache warm, and no index or pack left from another run."""
    from dataloader.textvid.features import packed_dir
    from dataloader.textvid.index import locations
    tv = args.root / "textvid"
    if not (tv / "textvid.json").is_file():
        t0 = time.time()
        write_textvid(tv, args.tideos)
        print(f"wrote {args.tideos} tideos to {tv} in {time.time() - t0:.0f} s", file=sys.stderr)
    for p in locations(str(tv / "textvid.json")):
        p.unlink(missing_ok=True)
    shutil.rmtree(packed_dir(tv / "features"), ignore_errors=True)
    with open(tv / "textvid.json", "rb") as f:
        while f.read(1 << 24):
            pass


def best(runs: list) -> dict:
    """One variant's passes: the least seconds, the most items/s, the median memory and CPU time per item."""
    out = {}
    for key in runs[0]:
        values = sorted(r[key] for r in runs)
        out[key] = values[-1] if key == "items_per_s" else values[0] if key.endswith("_s") else \
            values[len(values) // 2]
    return out


def measure(args) -> dict:
    """Every variant `--repeat` times, interleaved (a pass: each variant once); `best` of each. The pack is
    made once, before the passes, and moved aside while the variants that must not see it run."""
    from dataloader.textvid.features import packed_dir
    from dataloader.textvid.index import locations
    prepare(args)
    tv = args.root / "textvid"
    pack, aside = packed_dir(tv / "features"), tv / "features_packed.aside"
    res, runs = {}, {v: [] for v in VARIANTS}
    if args.pack:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "dataloader.textvid", "pack", str(tv)], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
        res["pack_s"] = time.time() - t0
        pack.rename(aside)
    for _ in range(args.repeat):
        for v in VARIANTS:
            if v == "packed" and not args.pack:
                continue
            if v == "build":
                for p in locations(str(tv / "textvid.json")):
                    p.unlink(missing_ok=True)
            if v == "packed":
                aside.rename(pack)
            runs[v].append(run_child(v, args))
            if v == "packed":
                pack.rename(aside)
    if args.pack:
        aside.rename(pack)
    res.update({v: best(r) for v, r in runs.items() if r})
    return res


def table(res: dict, n: int) -> str:
    scale = PAPER_TIDEOS / n
    cols = [v for v in ("today", "new", "packed") if v in res]
    head = f"| {n} tideos | " + " | ".join(cols) + f" | json.load | × {scale:.0f} = 721K: " + " / ".join(cols) + " |"
    lines = [head, "|---|" + "---|" * (len(cols) + 2)]

    def row(name, key, fmt, extrapolate=False, load=True):
        cells = [fmt(res[c][key]) if key in res[c] else "" for c in cols]
        tail = fmt(res["json_load"][key]) if load and key in res["json_load"] else ""
        big = " / ".join(fmt(res[c][key] * scale) for c in cols if key in res[c]) if extrapolate else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tail} | {big} |")

    row("start-up (s)", "startup_s", lambda x: f"{x:.2f}", True)
    row("  CPU time (s)", "startup_cpu_s", lambda x: f"{x:.2f}", True)
    for key, name in (("startup_s", "first run, index built (s)"), ("startup_cpu_s", "  CPU time (s)")):
        lines.append(f"| {name} | | {res['build'][key]:.2f} | | | {res['build'][key] * scale:.0f} |")
    row("rank PSS after start-up (MiB)", "rank_pss", lambda x: f"{x:.0f}", True)
    row("  of which anonymous (MiB)", "rank_anon", lambda x: f"{x:.0f}", True)
    row("workers' PSS growth from their first batch (MiB)", "workers_pss_growth", lambda x: f"{x:+.1f}", load=False)
    row("  of which anonymous (MiB)", "workers_anon_growth", lambda x: f"{x:+.1f}", load=False)
    row("workers' PSS growth from their start (MiB)", "workers_pss_from_start", lambda x: f"{x:+.1f}", load=False)
    row("  of which anonymous (MiB)", "workers_anon_from_start", lambda x: f"{x:+.1f}", load=False)
    row("  the index file's pages, shared (MiB)", "workers_index_pss", lambda x: f"{x:.1f}", load=False)
    row("items/s", "items_per_s", lambda x: f"{x:.0f}", load=False)
    row("workers' CPU time per item (ms)", "worker_cpu_ms", lambda x: f"{x:.2f}", load=False)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(p)  # holds llama2/tokenizer.model
    p.add_argument("--tideos", type=int, default=20000)
    p.add_argument("--root", type=Path, default=None, help="keep (or read) the data here: DIR/textvid/")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pack", action="store_true", help="also measure the packed features")
    p.add_argument("--repeat", type=int, default=3, help="interleaved passes (best of them)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.root, args.fixtures, args.items, args.workers)))
        return
    tmp = None
    if args.root is None:
        tmp = tempfile.mkdtemp(prefix="bench_textvid.")
        args.root = Path(tmp)
    try:
        res = measure(args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    n = res["new"]["tideos"]
    res.update(tideos=n, items=args.items, workers=args.workers, load_average=os.getloadavg()[0])
    print(json.dumps(res))
    print(table(res, n))
    return res


if __name__ == "__main__":
    main()
