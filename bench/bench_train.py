"""Training throughput and peak memory: batches padded to their longest sequence (what train.py does) vs
padded to max_seq_len (what the original code did), measured in one run; with `--grad_checkpointing`
also the first with the backbone's blocks recomputed in backward (train.py --grad_checkpointing).

Each mode runs in its own child process (so peak memory is that mode's alone): a small random
Llama-shaped TOPA, real NExT-QA val question text with a real tokenizer, the training sequences of
`--tasks` (vqa, plus vaq/qav if asked), forward + backward + AdamW step. Tokens/s counts real tokens
(not padding). Peak memory: CUDA `max_memory_allocated`; CPU the growth of the process's peak RSS
from just before the first training step (resource.getrusage).

  python bench/bench_train.py [--device cuda --precision bf16] [--tasks vqa,vaq,qav]
      [--grad_checkpointing]
  python bench/bench_train.py --padding    # padding of the sampler's batches only

`--padding` reports the padding fraction (padded slots / all slots, over every task's rows) of one
epoch of the training batch sampler on the NExT-QA val text (4,996 questions, the published finetuning
losses vqa + vaq + qav), plain (the published order) vs `--group_by_length`, at the scripts' batch sizes
and world sizes. Measured: 11.7% plain at batch 20 (Llama-2 7B finetuning, 1 or 8 GPUs), 0.4-0.7% grouped;
8.5% vs 0.3-0.4% at batch 6 (13B).
"""
import argparse
import csv
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch

from dataloader.base import TrainItem, fit_frames
from dataloader.packing import Batch
from dataloader.train_batches import TaskBatchSampler, TrainCollate
from engine.losses import TrainStep, total_loss
from llama.adapter import TOPAArgs, build_model
from llama.build import DTYPES
from text.prompts import PromptBuilder
from text.tokenizer import load_tokenizer
from toyworld.fixtures import add_argument as add_fixtures_argument
from toyworld.tiny import random_llama_state
from util.schedule import param_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pad_batch(b: Batch, L: int) -> Batch:
    """`b` padded on the right to length L (padding sees only itself and is never scored)."""
    B, n = b.tokens.shape
    if L <= n:
        return b
    extra = L - n
    tokens = torch.cat([b.tokens, b.tokens.new_zeros(B, extra)], 1)
    last = b.positions[:, -1:]
    positions = torch.cat([b.positions, last + torch.arange(1, extra + 1)], 1)
    mask = None  # whole rows: plain causal (padding at the end is never scored)
    if b.mask is not None:
        mask = torch.eye(L, dtype=torch.bool).expand(B, 1, L, L).clone()
        mask[:, :, :n, :n] = b.mask
    t_pred = b.t_pred // n * L + b.t_pred % n  # flat index b * n + i -> b * L + i
    return dataclasses.replace(b, tokens=tokens, positions=positions, mask=mask, t_pred=t_pred)


def make_items(builder, fixtures, n, tasks, seed=0):
    with open(os.path.join(fixtures, "nextqa", "val.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, r in enumerate(rows):
        q, opts, a = r["question"], [r[f"a{k}"] for k in range(5)], int(r["answer"])
        seqs = {"vqa": builder.mcqa(q, opts, a)}
        if "vaq" in tasks:
            seqs["vaq"] = builder.vaq(q, opts, a)
        if "qav" in tasks:
            seqs["qav"] = builder.qav(q, opts, a)
        items.append(TrainItem(i, r["qid"], fit_frames(torch.randn(16, 768, generator=g), builder.T), "vqa", seqs))
    return items


def padding(args):
    """Padding fraction of one epoch of TaskBatchSampler's batches, plain vs grouped by length."""
    import numpy as np
    tok = load_tokenizer(os.path.join(args.fixtures, args.tokenizer, "tokenizer.model"))
    items = make_items(PromptBuilder(tok, 10), args.fixtures, 10 ** 6, ["vqa", "vaq", "qav"])
    lens = np.array([[len(s) for s in it.seqs.values()] for it in items])  # [n, tasks]
    print(f"NExT-QA val text, {len(items)} items, tasks vqa+vaq+qav; mean length {lens.mean():.0f}, "
          f"max {lens.max()}")
    print(f"{'batch':>5} {'world':>5} {'plain pad %':>11} {'grouped pad %':>13}")
    out = {}
    for bs, world in ((6, 1), (6, 8), (20, 1), (20, 8)):
        row = []
        for grouped in (False, True):
            real = slots = 0
            for rank in range(world):
                s = TaskBatchSampler(len(items), bs, rank, world, seed=0, lengths=lens.sum(1) if grouped else None)
                for batch in s:
                    ll = lens[[i for _, i, _ in batch]]
                    real, slots = real + ll.sum(), slots + (ll.max(0) * len(ll)).sum()
            row.append(1 - real / slots)
        out[bs, world] = row
        print(f"{bs:5d} {world:5d} {100 * row[0]:11.1f} {100 * row[1]:13.1f}")
    return out


def child(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    tok = load_tokenizer(os.path.join(args.fixtures, args.tokenizer, "tokenizer.model"))
    margs = TOPAArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, vocab_size=tok.n_words,
                     multiple_of=64, max_feats=10)
    model = build_model(margs, random_llama_state(margs), dtype=DTYPES[args.precision], device=device)
    model.grad_checkpointing = args.mode == "checkpointed"
    tasks = args.tasks.split(",")
    items = make_items(PromptBuilder(tok, 10), args.fixtures, args.batch_size * (args.steps + 1), tasks)
    collate = TrainCollate(args.max_seq_len)
    batches = [collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    if args.mode == "fixed":
        batches = [dataclasses.replace(tb, parts={k: pad_batch(b, max(args.max_seq_len, b.tokens.shape[1]))
                                                  for k, b in tb.parts.items()}) for tb in batches]
    step = TrainStep(model)
    opt = torch.optim.AdamW(param_groups(model.trainable_parameters(), 0.1), lr=1e-4, betas=(0.9, 0.95))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one(tb):
        loss = total_loss(step(tb.to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one(batches[0])  # warm-up (not timed; its memory counts)
    sync()
    t0 = time.perf_counter()
    for tb in batches[1:]:
        one(tb)
    sync()
    dt = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB
    real = sum(tb.n_tokens for tb in batches[1:])
    padded = sum(b.tokens.numel() for tb in batches[1:] for b in tb.parts.values())
    too_long = sum(len(tb.too_long) for tb in batches[1:])
    print(json.dumps({"tokens_per_s": real / dt, "padded_tokens_per_s": padded / dt, "peak_mib": peak,
                      "pad_fraction": 1 - real / padded, "too_long": too_long, "seconds": dt}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(p)
    p.add_argument("--tokenizer", default="llama2", choices=["llama2", "llama3"])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--n_heads", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--max_seq_len", type=int, default=150, help="the fixed length of the original (pretraining: 150)")
    p.add_argument("--tasks", default="vqa", help="comma list of vqa, vaq, qav")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    p.add_argument("--grad_checkpointing", action="store_true", help="also measure batch-longest padding with "
                   "activation checkpointing of the backbone's blocks")
    p.add_argument("--padding", action="store_true", help="only the padding fraction of the sampler's batches, "
                   "plain vs --group_by_length")
    p.add_argument("--mode", choices=["dynamic", "fixed", "checkpointed"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.padding:
        return padding(args)
    if args.mode:
        return child(args)
    base = [sys.executable, os.path.abspath(__file__)] + [a for a in (argv or sys.argv[1:])]
    res = {}
    modes = ("dynamic", "fixed") + (("checkpointed",) if args.grad_checkpointing else ())
    for mode in modes:
        r = subprocess.run(base + ["--mode", mode], capture_output=True, text=True, cwd=REPO)
        if r.returncode:
            sys.exit(f"{mode} run failed:\n{r.stderr[-3000:]}")
        res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"model dim={args.dim} layers={args.n_layers} device={args.device} precision={args.precision}; "
          f"batch {args.batch_size}, {args.steps} steps, tasks {args.tasks}, NExT-QA val text, "
          f"fixed length {args.max_seq_len} ({res['fixed']['too_long']} items longer: kept whole)")
    print(f"{'padding':<22} {'tokens/s':>9} {'pad %':>6} {'peak MiB':>9}")
    labels = {"dynamic": "batch longest (ours)", "fixed": f"max_seq_len={args.max_seq_len}",
              "checkpointed": "ours + grad ckpt"}
    for mode in modes:
        r, label = res[mode], labels[mode]
        print(f"{label:<22} {r['tokens_per_s']:9.0f} {100 * r['pad_fraction']:6.1f} {r['peak_mib']:9.1f}")
    d, f = res["dynamic"], res["fixed"]
    print(f"ratio dynamic/fixed: {d['tokens_per_s'] / f['tokens_per_s']:.2f}x tokens/s, "
          f"{d['peak_mib'] / max(f['peak_mib'], 1e-9):.2f}x peak memory")
    if args.grad_checkpointing:
        c = res["checkpointed"]
        print(f"ratio grad checkpointing/none: {c['tokens_per_s'] / d['tokens_per_s']:.2f}x tokens/s, "
              f"{c['peak_mib'] / max(d['peak_mib'], 1e-9):.2f}x peak memory")
    return res


if __name__ == "__main__":
    main()
