"""Generation benchmarks end to end, measured in one run: eval.py's generation path
(engine.generation.generate: batches sorted by prompt length, greedy from a KV cache, the protocol's
masks, memory projection and token budget) against the original code's way (the MVBench notebook:
item by item, the whole sequence recomputed for every new token), both followed by the benchmark's
metric (COCO caption metrics through pycocoevalcap for the captioning sets: its Java start-up, both
sides pay it), on MVBench-like items (2 new tokens, question + 3-5 choices), MSR-VTT-like (10 tokens)
and VATEX-like (15 tokens). Start-up (a fresh eval.py process to its first batch,
bench/bench_startup.py) is measured in the same run, with the model built as before (random init on
the meta device) and as now, and added to each side. The two variants must generate the same tokens
(checked; exit 1 if not).

Prompts are real text (NExT-QA val questions and options from the fixtures) with a real tokenizer, in
the protocols' exact format; the model is a random Llama-2-shaped TOPA (dim 512, 8 layers, no download)
with random gates; the memory is a random unit-norm bank (`--memory_rows`). Timing: the variants
interleaved pass by pass, best of `--repeat`, one CPU thread by default (the machine is shared).

  python bench/bench_generate.py
  python bench/bench_generate.py --device cuda --precision bf16 --dim 4096 \
      --layers 32 --heads 32

Measured on the shared 2-core CPU machine (fp32, 1 thread, Llama-2 tokenizer, batch 16, dim 512 x 8
layers, 65536 memory rows, 48 items per set, best of 2; load average 6-8, so absolute times are slow):

  set      items new tok prompt variant                          gen s  tokens/s +metric s +start-up s
  mvbench     48       2     89 item by item, full recompute    135.01       0.7    135.01      147.49
  mvbench     48       2     89 batch 16, KV cache               34.84       2.8     34.84       42.07
  msrvtt      48      10     46 item by item, full recompute    153.56       3.1    181.20      193.68
  msrvtt      48      10     46 batch 16, KV cache                9.28      51.7     29.70       36.93
  vatex       48      15     35 item by item, full recompute     92.07       7.8    112.87      125.35
  vatex       48      15     35 batch 16, KV cache               10.37      69.4     48.42       55.65
  ours / original (generation; + metric; + start-up): mvbench 3.9x, 3.9x, 3.5x; msrvtt 16.5x, 6.1x,
  5.2x; vatex 8.9x, 2.3x, 2.3x; generated tokens identical

The start-up in that run: 12.48 s before (random init on meta), 7.23 s now. The COCO metrics (Java)
took 21-38 s per call under that load, a large share of the captioning sets' end-to-end time.
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

from engine.caption_metrics import coco_caption_metrics  # noqa: E402
from engine.generation import GenItem, generate  # noqa: E402
from llama.adapter import TOPAArgs, build_model  # noqa: E402
from llama.build import DTYPES  # noqa: E402
from text.protocols import MSRVTT, MVBENCH, VATEX, choices_text, prompt_ids, published_correct  # noqa: E402
from text.tokenizer import load_tokenizer  # noqa: E402
from toyworld.fixtures import add_argument as add_fixtures_argument  # noqa: E402
from toyworld.tiny import random_llama_state  # noqa: E402

T = 10
REFS = ["a man is cooking in a kitchen", "someone prepares food", "a person plays a guitar on stage",
        "a group of people dance in a room", "a woman talks about a car"]
VARIANTS = {"original": dict(batch_size=1, kv_cache=False),  # item by item, full recomputation per token
            "ours": dict(kv_cache=True)}                     # batches of --batch_size, KV cache


def video(g):
    return F.normalize(torch.randn(T, 768, generator=g), dim=-1)


def mvbench_items(tok, fix, n, g):
    """MVBench-protocol prompts on NExT-QA val questions, 3..5 of their options each."""
    with open(os.path.join(fix, "nextqa", "val.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    items = []
    for i in range(n):
        r = rows[i % len(rows)]
        cands = [r[f"a{k}"] for k in range(3 + i % 3)]
        p2 = MVBENCH.p2_text(question=r["question"] + "?", choices=choices_text(cands))
        rec = SimpleNamespace(key=f"q{i}", candidates=cands, gold="ABCDE"[i % len(cands)])
        items.append(GenItem(i, rec, prompt_ids(tok, MVBENCH.p1, p2, T), video(g)))
    return items


def caption_items(tok, protocol, n, g):
    return [GenItem(i, SimpleNamespace(key=f"video{i}", refs=[REFS[i % len(REFS)], REFS[(i + 1) % len(REFS)]]),
                    prompt_ids(tok, protocol.p1, protocol.p2, T), video(g)) for i in range(n)]


def metric(protocol, items, outs):
    """The benchmark's metric over the answers: MVBench accuracy by the published check, COCO captions."""
    if protocol.metric == "choice":
        return sum(published_correct(o["answer"], it.record.gold) for it, o in zip(items, outs)) / len(items)
    return coco_caption_metrics({it.record.key: it.record.refs for it in items},
                                {it.record.key: o["answer"] for it, o in zip(items, outs)})["CIDEr"]


def startup(args) -> dict:
    """bench_startup's eval.py start-up to the first batch, before/after, in fresh processes."""
    import tempfile
    from pathlib import Path
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import bench_startup
    with tempfile.TemporaryDirectory() as tmp:
        bench_startup.write_world(Path(tmp), args.fixtures, dim=args.dim, layers=args.layers, heads=args.heads)
        return bench_startup.measure(Path(tmp), args.repeat)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(p)
    p.add_argument("--tokenizer", default="llama2", choices=["llama2", "llama3"])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=None)
    p.add_argument("--adapter_len", type=int, default=50)
    p.add_argument("--items", type=int, nargs=3, default=[48, 48, 48], metavar=("MVBENCH", "MSRVTT", "VATEX"))
    p.add_argument("--memory_rows", type=int, default=65536, help="rows of the random memory bank")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="timed passes per variant; the best is reported")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--no_startup", action="store_true", help="leave the start-up measurement out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
    memory = F.normalize(torch.randn(args.memory_rows, 768, generator=g), dim=-1).half().to(device)
    sets = {"mvbench": (MVBENCH, mvbench_items(tok, args.fixtures, args.items[0], g)),
            "msrvtt": (MSRVTT, caption_items(tok, MSRVTT, args.items[1], g)),
            "vatex": (VATEX, caption_items(tok, VATEX, args.items[2], g))}
    res = {(s, v): {"gen": [], "total": []} for s in sets for v in VARIANTS}

    def once(name, variant, items=None):
        protocol, all_items = sets[name]
        items = items or all_items
        kw = {"batch_size": args.batch_size, **VARIANTS[variant]}
        sync()
        t0 = time.perf_counter()
        outs = generate(model, tok, items, protocol, progress=False,
                        memory=memory if protocol.memory else None, **kw)
        sync()
        t1 = time.perf_counter()
        metric(protocol, items, outs)
        return t1 - t0, time.perf_counter() - t0, [o["ids"] for o in outs]

    load0 = os.getloadavg()[0]
    for k in res:  # warm-up (a few items; the caption sets start Java once)
        once(*k, items=sets[k[0]][1][:2])
    for _ in range(args.repeat):
        for k in res:
            gen, total, ids = once(*k)
            res[k]["gen"].append(gen)
            res[k]["total"].append(total)
            res[k]["ids"] = ids
    up = {"before": 0.0, "after": 0.0} if args.no_startup else startup(args)
    print(f"model dim={args.dim} layers={args.layers} heads={args.heads} kv_heads={args.kv_heads or args.heads} "
          f"vocab={tok.n_words} adapter_len={args.adapter_len} T={T}; device={device} precision={args.precision} "
          f"threads={torch.get_num_threads()}; batch {args.batch_size}; memory {args.memory_rows} rows; load "
          f"average {load0:.1f} -> {os.getloadavg()[0]:.1f}; best of {args.repeat} passes")
    if not args.no_startup:
        print(f"start-up of eval.py to its first batch: {up['before']:.2f} s before (random init on meta), "
              f"{up['after']:.2f} s now (importing torch alone: {up['torch_import']:.2f} s)")
    print(f"{'set':<8} {'items':>5} {'new tok':>7} {'prompt':>6} {'variant':<30} {'gen s':>7} {'tokens/s':>9} "
          f"{'+metric s':>9} {'+start-up s':>11}")
    ratios, same = {}, True
    for name, (protocol, items) in sets.items():
        n_tok = sum(len(i) for i in res[name, "ours"]["ids"])
        mean_len = sum(len(it.prompt) for it in items) / len(items)
        e2e = {}
        for v, up_s, label in (("original", up["before"], "item by item, full recompute"),
                               ("ours", up["after"], f"batch {args.batch_size}, KV cache")):
            gen, total = min(res[name, v]["gen"]), min(res[name, v]["total"])
            e2e[v] = (gen, total, total + up_s)
            print(f"{name:<8} {len(items):5d} {protocol.max_new_tokens:7d} {mean_len:6.0f} {label:<30} {gen:7.2f} "
                  f"{n_tok / gen:9.1f} {total:9.2f} {total + up_s:11.2f}")
        ratios[name] = tuple(e2e["original"][i] / e2e["ours"][i] for i in range(3))
        same &= res[name, "ours"]["ids"] == res[name, "original"]["ids"]
    print("ours / original (generation; + metric; + start-up): " + "; ".join(
        f"{n} {a:.1f}x, {b:.1f}x, {c:.1f}x" for n, (a, b, c) in ratios.items())
        + f"; generated tokens identical: {same}")
    if not same:
        sys.exit("the two variants generated different tokens")
    return ratios


if __name__ == "__main__":
    main()
