"""Generation benchmarks' speed, measured in one run: items/s and generated tokens/s of eval.py's
generation path (engine.generation.generate: batches sorted by prompt length, greedy, the protocol's
masks and token budget) with the KV cache vs recomputing the whole sequence for every new token, on
MVBench-like items (2 new tokens, many items, question + 3-5 choices) and MSR-VTT-like items (10 new
tokens, one fixed prompt). The two variants must generate the same tokens (checked; exit 1 if not).

Prompts are real text (NExT-QA val questions and options from the fixtures) with a real tokenizer, in
the protocols' exact format; the model is a random Llama-shaped TOPA (no download) with random gates.
Memory projection is left out (it costs the same in both variants). Timing: the variants interleaved
pass by pass, best of `--repeat`.

  python bench/bench_generate.py --fixtures $TOPA_FIXTURES                          # small CPU shapes
  python bench/bench_generate.py --device cuda --precision bf16 --dim 4096 --layers 32 --heads 32   # 7B-shaped

Measured on the shared 2-core CPU machine (quiet, fp32, Llama-2 tokenizer, batch 16): KV cache / full
recomputation = 1.73x (MVBench-like, 2 tokens, 195 vs 113 items/s) and 3.58x (MSR-VTT-like, 10 tokens,
1418 vs 396 tokens/s) at dim 256 x 4 layers; 1.95x and 6.42x at dim 1024 x 8 layers. With 2 new tokens
the cache saves one of two passes over the prompt (at most 2x); with 10 the saving grows with the
model, as the output layer and per-step overheads weigh less. The same run on a busy machine (load 5+)
varied 3x between passes: compare ratios from one run only.
"""
import argparse
import csv
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.generation import GenItem, generate  # noqa: E402
from llama.adapter import TOPAArgs, build_model  # noqa: E402
from llama.build import DTYPES  # noqa: E402
from text.protocols import MSRVTT, MVBENCH, choices_text, prompt_ids  # noqa: E402
from text.tokenizer import load_tokenizer  # noqa: E402
from toyworld.tiny import random_llama_state  # noqa: E402

T = 10


def mvbench_items(tok, fix, n, g):
    """MVBench-protocol prompts on NExT-QA val questions, 3..5 of their options each."""
    with open(os.path.join(fix, "nextqa", "val.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    items = []
    for i in range(n):
        r = rows[i % len(rows)]
        cands = [r[f"a{k}"] for k in range(3 + i % 3)]
        p2 = MVBENCH.p2_text(question=r["question"] + "?", choices=choices_text(cands))
        items.append(GenItem(i, SimpleNamespace(candidates=cands), prompt_ids(tok, MVBENCH.p1, p2, T),
                             F.normalize(torch.randn(T, 768, generator=g), dim=-1)))
    return items


def msrvtt_items(tok, n, g):
    return [GenItem(i, SimpleNamespace(), prompt_ids(tok, MSRVTT.p1, MSRVTT.p2, T),
                    F.normalize(torch.randn(T, 768, generator=g), dim=-1)) for i in range(n)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", default=os.environ.get("TOPA_FIXTURES"))
    p.add_argument("--tokenizer", default="llama2", choices=["llama2", "llama3"])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=None)
    p.add_argument("--adapter_len", type=int, default=50)
    p.add_argument("--mvbench_items", type=int, default=64)
    p.add_argument("--msrvtt_items", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="timed passes per variant; the best is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    args = p.parse_args(argv)
    if not args.fixtures:
        p.error("--fixtures (or TOPA_FIXTURES) must point at the fixtures folder")
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tok = load_tokenizer(os.path.join(args.fixtures, args.tokenizer, "tokenizer.model"))
    margs = TOPAArgs(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                     vocab_size=tok.n_words, multiple_of=64, adapter_len=args.adapter_len, max_feats=T, bias=3.5)
    model = build_model(margs, random_llama_state(margs), dtype=DTYPES[args.precision], device=device).eval()
    with torch.no_grad():  # gates away from their init, so every term of the attention is live
        for name, prm in model.trainable_parameters():
            if "gate" in name:
                prm.uniform_(-2.0, 1.0)
    g = torch.Generator().manual_seed(0)
    sets = {"mvbench": (MVBENCH, mvbench_items(tok, args.fixtures, args.mvbench_items, g)),
            "msrvtt": (MSRVTT, msrvtt_items(tok, args.msrvtt_items, g))}
    runs = [(s, kv) for s in sets for kv in (False, True)]
    res = {k: {"times": []} for k in runs}

    def once(name, kv):
        protocol, items = sets[name]
        sync()
        t0 = time.perf_counter()
        outs = generate(model, tok, items, protocol, batch_size=args.batch_size, device=device, kv_cache=kv,
                        progress=False)
        sync()
        return time.perf_counter() - t0, [o["ids"] for o in outs]

    load0 = os.getloadavg()[0]
    for k in runs:  # warm-up
        once(*k)
    for _ in range(args.repeat):
        for k in runs:
            dt, ids = once(*k)
            res[k]["times"].append(dt)
            res[k]["ids"] = ids
    print(f"model dim={args.dim} layers={args.layers} heads={args.heads} kv_heads={args.kv_heads or args.heads} "
          f"vocab={tok.n_words} adapter_len={args.adapter_len} T={T}; device={device} precision={args.precision} "
          f"threads={torch.get_num_threads()}; batch {args.batch_size}; load average {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; best of {args.repeat} passes")
    print(f"{'set':<9} {'new tok':>7} {'prompt':>6} {'variant':<15} {'items/s':>9} {'tokens/s':>9}")
    ratios, same = {}, True
    for name, (protocol, items) in sets.items():
        n_tok = sum(len(i) for i in res[name, True]["ids"])
        mean_len = sum(len(it.prompt) for it in items) / len(items)
        for kv in (False, True):
            best = min(res[name, kv]["times"])
            print(f"{name:<9} {protocol.max_new_tokens:7d} {mean_len:6.0f} {'KV cache' if kv else 'full recompute':<15} "
                  f"{len(items) / best:9.2f} {n_tok / best:9.1f}")
        ratios[name] = min(res[name, False]["times"]) / min(res[name, True]["times"])
        same &= res[name, True]["ids"] == res[name, False]["ids"]
    print("KV cache / full recompute: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
          + f"; generated tokens identical: {same}")
    if not same:
        sys.exit("KV-cache generation produced other tokens than full recomputation")
    return ratios


if __name__ == "__main__":
    main()
