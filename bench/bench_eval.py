"""Questions/s of shared-prefix ("packed") vs full per-option scoring, measured in one run.

Prompts are real benchmark text (NExT-QA val questions; EgoSchema questions) with a real tokenizer;
the model is a small random Llama-shaped TOPA, so the ratio reflects the work saved, not the absolute
speed of a 7B model. Also checks that both modes give the same scores.

  python bench/bench_eval.py [--device cuda --precision bf16]
"""
import argparse
import csv
import json
import os
import time

import torch

from dataloader.base import EvalItem, fit_frames
from dataloader.packing import ScoringCollate
from engine.infer import score
from llama.adapter import TOPAArgs, build_model
from llama.build import DTYPES
from text.prompts import EGOSCHEMA, PromptBuilder
from text.tokenizer import load_tokenizer
from toyworld.fixtures import add_argument as add_fixtures_argument
from toyworld.tiny import random_llama_state


def nextqa_questions(fix, n):
    with open(os.path.join(fix, "nextqa", "val.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return [(r["question"], [r[f"a{i}"] for i in range(5)]) for r in rows]


def egoschema_questions(fix, n):
    with open(os.path.join(fix, "egoschema", "questions_sample_617b469.json")) as f:
        rows = json.load(f)
    rows = (rows * (n // len(rows) + 1))[:n]
    return [(r["question"], [r[f"option {i}"] for i in range(5)]) for r in rows]


def make_items(builder, qs, style=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {"style": style} if style else {}
    return [EvalItem(i, None, fit_frames(torch.randn(16, 768, generator=g), builder.T), builder.mcqa_options(q, o, **kw))
            for i, (q, o) in enumerate(qs)]


def run(model, items, mode, batch_size, device, sync):
    coll = ScoringCollate(mode)
    batches = [coll(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    scores = []
    score(model, batches[0].to(device))  # warm-up
    sync()
    t0 = time.perf_counter()
    for b in batches:
        scores += [s.nll for s in score(model, b.to(device))]
    sync()
    return len(items) / (time.perf_counter() - t0), torch.tensor(scores)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(p)
    p.add_argument("--tokenizer", default="llama2", choices=["llama2", "llama3"])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--n_heads", type=int, default=8)
    p.add_argument("--questions", type=int, default=40)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tok = load_tokenizer(os.path.join(args.fixtures, args.tokenizer, "tokenizer.model"))
    margs = TOPAArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, vocab_size=tok.n_words,
                     multiple_of=64, max_feats=10)
    model = build_model(margs, random_llama_state(margs), dtype=DTYPES[args.precision], device=device).eval()
    builder = PromptBuilder(tok, 10)
    print(f"model dim={args.dim} layers={args.n_layers} vocab={tok.n_words} device={device} "
          f"precision={args.precision}; {args.questions} questions/set, batch {args.batch_size}")
    print(f"{'set':<10} {'mean len':>8} {'full q/s':>9} {'packed q/s':>10} {'speed-up':>8} {'max |Δscore|':>12}")
    results = {}
    for name, qs, style in (("nextqa", nextqa_questions(args.fixtures, args.questions), None),
                            ("egoschema", egoschema_questions(args.fixtures, args.questions), EGOSCHEMA)):
        items = make_items(builder, qs, style)
        mean_len = sum(len(s) for it in items for s in it.seqs) / (5 * len(items))
        full_qps, full_s = run(model, items, "full", args.batch_size, device, sync)
        packed_qps, packed_s = run(model, items, "packed", args.batch_size, device, sync)
        diff = (full_s - packed_s).abs().max().item()
        results[name] = packed_qps / full_qps
        print(f"{name:<10} {mean_len:8.0f} {full_qps:9.2f} {packed_qps:10.2f} {packed_qps / full_qps:7.2f}x "
              f"{diff:12.2e}")
    return results


if __name__ == "__main__":
    main()
