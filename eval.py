"""Zero-shot multiple-choice evaluation (NExT-QA, STAR, TVQA, EgoSchema). Runs plainly on CPU/GPU
or under torchrun with N processes; every question is scored exactly once.

  python eval.py --model 7B --llama_model_path ./pretrained/llama2/ --dataset nextqa \
      --resume vqa_checkpoint/topa.pth --memory --output_dir results/nextqa
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine  # noqa: E402
from dataloader.registry import build_mcqa_dataset, type_groups  # noqa: E402
from llama.build import load_topa, resolve_dtype  # noqa: E402
from llama.checkpoint import load_memory  # noqa: E402
from llama.prompts import PromptBuilder  # noqa: E402
from util import dist  # noqa: E402
from util.args import add_data_args, add_model_args, run_cli  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default=None, help="val (default) or test; --test is short for --split test")
    p.add_argument("--test", action="store_true", help="evaluate the test split (EgoSchema: writes a submission)")
    p.add_argument("--resume", default=None, help="TOPA checkpoint to evaluate")
    p.add_argument("--scoring", choices=["packed", "full"], default="packed",
                   help="packed: run each question's shared prefix once (fast); full: each option whole")
    args = p.parse_args(argv)
    args.split = args.split or ("test" if args.test else "val")
    return args


def main(args):
    if args.dry_run:
        print(vars(args))
        return None
    rank, world, device = dist.init_distributed(args.device)
    torch.manual_seed(args.seed)
    dtype = resolve_dtype(args.precision, device)
    model, tok, _ = load_topa(args, device, dtype, resume=args.resume)
    if args.resume is None and dist.is_main():
        print("warning: no --resume checkpoint: evaluating freshly initialised TOPA parameters")
    memory = None
    if args.memory:
        memory = load_memory(args.memory_path or os.path.join(args.data_root, "textvid", "memory.pkl")).to(device)
    builder = PromptBuilder(tok, args.max_feats)
    ds = build_mcqa_dataset(args.dataset, args.data_root, args.split, builder, args.max_feats,
                            skip_missing=args.skip_missing, sub=args.sub,
                            dialogue_max_len=args.max_seq_len if args.truncate_dialogue else None)
    res = engine.evaluate(model, ds, batch_size=args.batch_size, device=device, memory=memory,
                          scoring=args.scoring, max_seq_len=args.max_seq_len, num_workers=args.num_workers,
                          desc=f"{args.dataset}/{args.split}")
    acc = None
    if dist.is_main():
        acc = engine.write_eval_outputs(res, args.output_dir, args.dataset, args.split,
                                        lambda t: type_groups(args.dataset, t), submission=args.split == "test")
        title = f"{args.dataset} {args.split}: {len(res['predictions'])} questions"
        if res["n_too_long"]:
            title += f" ({res['n_too_long']} longer than max_seq_len={args.max_seq_len}, scored whole)"
        if res["n_cut"]:
            title += f" ({res['n_cut']} with dialogue cut to fit max_seq_len={args.max_seq_len})"
        print(engine.format_table(acc, title) if acc else title + " (no answers: nothing to score)")
    dist.barrier()
    dist.cleanup()
    return acc


if __name__ == "__main__":
    run_cli(main, get_args(), "eval.py")
