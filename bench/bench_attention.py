"""Attention kernels and the KV cache, measured in one run: packed multiple-choice scoring (questions/s)
and training steps (forward + backward into the TOPA parameters, real tokens/s) with the eager reference
vs the fused (SDPA) attention, and greedy generation (generated tokens/s) from the KV cache vs
recomputing the whole sequence per token. Scores of the two kernels are compared and the generated
tokens must be identical (asserted).

Timing: one process, the variants interleaved pass by pass, the best of `--repeat` passes each (the
least disturbed by other work on a shared machine). Peak memory: CUDA `max_memory_allocated` per
variant (weights included); on CPU (Linux) each variant runs again in a child process, which reports
its peak RSS during one pass above its RSS before that pass (weights excluded; see `child_memory`).

Random Llama-shaped weights (toyworld.tiny.random_llama_state, no download), synthetic prompts shaped
like the real ones (mcqa: ~90-token prefix with a 10-frame video slot, 5 options of a few tokens each).

  python bench/bench_attention.py                                  # small CPU shapes
  python bench/bench_attention.py --device cuda --precision bf16 --dim 4096 --layers 32 --heads 32   # 7B
  ... --dim 5120 --layers 40 --heads 40                                                               # 13B
  ... --dim 4096 --layers 32 --heads 32 --kv_heads 8 --vocab 128256 --ffn_mult 1.3 --multiple_of 1024  # 8B
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dataloader.packing import collate_rows, pack_options, single_row  # noqa: E402
from engine import infer  # noqa: E402
from engine.losses import span_loss  # noqa: E402
from llama.adapter import TOPAArgs, build_model  # noqa: E402
from llama.build import DTYPES  # noqa: E402
from llama.decoding import greedy_generate  # noqa: E402
from text.prompts import VIDEO, Sequence  # noqa: E402
from toyworld.tiny import random_llama_state  # noqa: E402

T = 10
RUNS = [("scoring", "eager"), ("scoring", "sdpa"), ("training", "eager"), ("training", "sdpa"),
        ("training", "sdpa-causal"), ("generation", "full"), ("generation", "cache")]


def synthetic_questions(n, vocab, g, n_options=5):
    """Per question, its option sequences: BOS, instruction+question-like prefix around a VIDEO×T slot,
    then `Answer ... (X) EOS` tails that differ per option."""
    out = []
    for _ in range(n):
        r = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()  # noqa: E731
        head = [1] + r(16)
        shared = head + [VIDEO] * T + r(int(torch.randint(50, 80, (1,), generator=g))) + r(8)
        seqs = [Sequence(shared + r(int(torch.randint(2, 6, (1,), generator=g))) + [2], len(head), len(shared) - 2)
                for _ in range(n_options)]
        out.append(seqs)
    return out


def videos(n, g):
    return [F.normalize(torch.randn(T, 768, generator=g), dim=-1) for _ in range(n)]


def build(args):
    """Model and, per (section, variant), a function that runs one pass and returns its outputs."""
    torch.manual_seed(0)  # TOPA parameter init: every process builds the same model
    device = torch.device(args.device)
    margs = TOPAArgs(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                     vocab_size=args.vocab, multiple_of=args.multiple_of, ffn_dim_multiplier=args.ffn_mult,
                     adapter_len=args.adapter_len, max_feats=T, bias=3.5)
    model = build_model(margs, random_llama_state(margs), dtype=DTYPES[args.precision], device=device)
    with torch.no_grad():  # gates away from their init, so every term of the attention is live
        for name, p in model.trainable_parameters():
            if "gate" in name:
                p.uniform_(-2.0, 1.0)
    g = torch.Generator().manual_seed(0)

    qs = synthetic_questions(args.questions, args.vocab, g)
    vids = videos(len(qs), g)
    bs = args.batch_size
    scoring = [collate_rows([pack_options(s) for s in qs[i:i + bs]], vids[i:i + bs],
                            items=qs[i:i + bs]).to(device) for i in range(0, len(qs), bs)]

    qs = synthetic_questions(args.train_batch * args.train_steps, args.vocab, g, n_options=1)
    vids = videos(len(qs), g)
    bs = args.train_batch
    training = [collate_rows([single_row(s[0]) for s in qs[i:i + bs]], vids[i:i + bs]).to(device)
                for i in range(0, len(qs), bs)]
    n_train = sum(len(s[0]) for s in qs)

    qs = synthetic_questions(args.gen_prompts, args.vocab, g, n_options=1)
    prompts = [s[0].tokens[:s[0].span_start] for s in qs]
    gvids = torch.stack(videos(len(prompts), g))

    def score(impl):
        model.eval().set_attn_impl(impl)
        scores = [x.nll for b in scoring for x in infer.score(model, b)]
        return len(scores), scores

    def train(impl, causal):
        model.train().set_attn_impl(impl)
        for b in training:
            if causal:  # single right-padded rows: plain causal, the flash fast path
                b = dataclasses.replace(b, mask=None)
            model.zero_grad(set_to_none=True)
            span_loss(model, b).backward()
        return n_train, None

    def generate(use_cache):
        model.eval().set_attn_impl("sdpa")
        ids = [r for i in range(0, len(prompts), args.gen_batch)
               for r in greedy_generate(model, prompts[i:i + args.gen_batch], gvids[i:i + args.gen_batch],
                                        max_new_tokens=args.new_tokens, masked_ids=(3, 4), use_cache=use_cache)]
        return sum(len(r) for r in ids), ids

    runs = {("scoring", "eager"): lambda: score("eager"), ("scoring", "sdpa"): lambda: score("sdpa"),
            ("training", "eager"): lambda: train("eager", False), ("training", "sdpa"): lambda: train("sdpa", False),
            ("training", "sdpa-causal"): lambda: train("sdpa", True),
            ("generation", "full"): lambda: generate(False), ("generation", "cache"): lambda: generate(True)}
    return model, device, runs


def proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def child_memory(args):
    """One variant (after the model, the data and one warm-up pass): peak RSS above the RSS before the
    pass, in MiB. Linux: the peak (VmHWM) is reset through /proc/self/clear_refs; the parent sets
    MALLOC_MMAP_THRESHOLD_ so that freed tensors go back to the system and RSS follows live memory."""
    _, _, runs = build(args)
    run = runs[tuple(args.memory.split(":"))]
    run()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = proc_status_mib("VmRSS")
    run()
    print(json.dumps(proc_status_mib("VmHWM") - rss0))


def measure(args):
    model, device, runs = build(args)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    res = {k: {"times": []} for k in RUNS}
    for k in RUNS:  # warm-up, and peak memory on CUDA
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
        runs[k]()
        sync()
        res[k]["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    for _ in range(args.repeat):
        for k in RUNS:
            sync()
            t0 = time.perf_counter()
            units, out = runs[k]()
            sync()
            res[k]["times"].append(time.perf_counter() - t0)
            res[k]["out"] = out
            res[k]["rate"] = units / min(res[k]["times"])
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=None, help="default: --heads (MHA); fewer: GQA")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--ffn_mult", type=float, default=None)
    p.add_argument("--multiple_of", type=int, default=256)
    p.add_argument("--adapter_len", type=int, default=50)
    p.add_argument("--questions", type=int, default=16, help="scoring: questions (5 options each)")
    p.add_argument("--batch_size", type=int, default=4, help="scoring: questions per batch")
    p.add_argument("--train_batch", type=int, default=8)
    p.add_argument("--train_steps", type=int, default=3)
    p.add_argument("--gen_prompts", type=int, default=8)
    p.add_argument("--gen_batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="timed passes per measurement; the best is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    p.add_argument("--memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory:
        return child_memory(args)
    load0 = os.getloadavg()[0]
    res = measure(args)
    if not args.device.startswith("cuda") and os.path.exists("/proc/self/clear_refs"):
        base = [sys.executable, os.path.abspath(__file__)] + list(argv if argv is not None else sys.argv[1:])
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        for k in RUNS:
            r = subprocess.run(base + ["--memory", ":".join(k)], capture_output=True, text=True, cwd=REPO, env=env)
            if r.returncode:
                sys.exit(f"{k} memory run failed:\n{r.stderr[-3000:]}")
            res[k]["peak_mib"] = json.loads(r.stdout.strip().splitlines()[-1])
    if res["generation", "cache"]["out"] != res["generation", "full"]["out"]:
        sys.exit("KV-cache generation produced other tokens than full recomputation")
    se, sf = (torch.tensor(res["scoring", v]["out"]) for v in ("eager", "sdpa"))
    kv = args.kv_heads or args.heads
    print(f"model dim={args.dim} layers={args.layers} heads={args.heads} kv_heads={kv} vocab={args.vocab} "
          f"adapter_len={args.adapter_len} T={T}; device={args.device} precision={args.precision} "
          f"threads={torch.get_num_threads()}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"best of {args.repeat} passes")
    print(f"scoring: {args.questions} questions x 5 options, packed, {args.batch_size} per batch; training: "
          f"{args.train_steps} steps x {args.train_batch} rows; generation: {args.gen_prompts} prompts in batches of "
          f"{args.gen_batch}, {args.new_tokens} new tokens (greedy, 2 masked ids)")
    rows = [("scoring", "eager", "eager", "questions/s"), ("scoring", "sdpa", "fused (sdpa)", "questions/s"),
            ("training", "eager", "eager, bool mask", "tokens/s"),
            ("training", "sdpa", "fused, bool mask", "tokens/s"),
            ("training", "sdpa-causal", "fused, is_causal", "tokens/s"),
            ("generation", "full", "full recompute", "new tokens/s"),
            ("generation", "cache", "KV cache", "new tokens/s")]
    peak = "peak MiB (CUDA)" if args.device.startswith("cuda") else "peak RSS above start MiB"
    print(f"{'':<11} {'variant':<18} {'rate':>10} {'unit':<13} {peak:>24}")
    for section, variant, label, unit in rows:
        r = res[section, variant]
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        print(f"{section:<11} {label:<18} {r['rate']:10.1f} {unit:<13} {mem:>24}")
    ratio = lambda s, a, b: res[s, a]["rate"] / res[s, b]["rate"]  # noqa: E731
    print(f"fused/eager: scoring {ratio('scoring', 'sdpa', 'eager'):.2f}x, training {ratio('training', 'sdpa', 'eager'):.2f}x "
          f"(is_causal {ratio('training', 'sdpa-causal', 'eager'):.2f}x); "
          f"cache/full generation {ratio('generation', 'cache', 'full'):.2f}x")
    print(f"checks: max |score eager - fused| = {(se - sf).abs().max().item():.2e}; generated tokens identical "
          f"({sum(len(i) for i in res['generation', 'cache']['out'])} tokens)")
    return res


if __name__ == "__main__":
    main()
