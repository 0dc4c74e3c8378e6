"""Train TOPA: TextVid pre-alignment (--textvid), finetuning (--finetune --resume <TOPA checkpoint>) or the
baseline (no checkpoint) on nextqa / star / tvqa. Runs plainly on CPU/GPU or under torchrun (DDP).

  torchrun --nproc_per_node 4 train.py --model 7B --llama_model_path ./pretrained/llama2/ --textvid \
      --video_caption --openvqa --answer_balance --max_seq_len 150 --batch_size 18 --accum_iter 4 ...
  python train.py ... --resume out/checkpoint_3.pth            # continue that run exactly
  python train.py ... --finetune --resume topa.pth --dataset nextqa   # weights only, fresh optimizer

Only the TOPA parameters train and are saved (llama.adapter.is_trainable). Every epoch writes
<output_dir>/checkpoint_<epoch>.pth (+ checkpoint_last.pth, and checkpoint_best.pth when evaluation runs)
and appends to <output_dir>/log.jsonl.
"""
import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from util.args import add_data_args, add_model_args  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--warmup_epochs", type=float, default=1.0, help="linear warmup length in epochs")
    g.add_argument("--blr", type=float, default=1e-2,
                   help="base lr: lr = blr * batch_size * accum_iter * world_size / 256")
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", type=float, default=0.0, help="end of the cosine schedule")
    g.add_argument("--weight_decay", type=float, default=0.1, help="on trainable params with ndim >= 2")
    g.add_argument("--accum_iter", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--clip_grad", type=float, default=None, help="max gradient norm (default: no clipping)")
    g.add_argument("--weight_captioning", type=float, default=1.0,
                   help="weight of the vaq loss and of caption batches' loss")
    g.add_argument("--textvid", action="store_true", help="pre-align on TextVid (<data_root>/textvid)")
    g.add_argument("--video_caption", action="store_true",
                   help="TextVid: each iteration is a caption batch with probability 0.5")
    g.add_argument("--openvqa", action="store_true",
                   help="TextVid caption batches: an item holds its open-ended QA with probability 0.5")
    g.add_argument("--answer_balance", action="store_true", help="TextVid: shuffle the options")
    g.add_argument("--variance", type=float, default=0.0, help="TextVid: Gaussian noise variance on frames")
    g.add_argument("--vaq", action="store_true", help="add the question-from-answer loss (flipped VQA)")
    g.add_argument("--qav", action="store_true", help="add the video-from-question-and-answer loss")
    g.add_argument("--finetune", action="store_true",
                   help="with --resume: load the checkpoint's weights only (fresh optimizer, epoch 0)")
    g.add_argument("--resume", default=None,
                   help="checkpoint to continue from (exactly: optimizer, schedule, epoch, RNG, data order), "
                        "or with --finetune to start from")
    g.add_argument("--start_epoch", type=int, default=0, help="first epoch (set by --resume)")
    g.add_argument("--stop_after", type=int, default=None,
                   help="leave after this many epochs of this run (e.g. a time-limited job); the lr schedule "
                        "still spans --epochs: continue with --resume <output_dir>/checkpoint_last.pth")
    g.add_argument("--train_split", default="train")
    g.add_argument("--eval_datasets", default=None,
                   help="comma list evaluated zero-shot after every epoch (with --memory if given); "
                        "default: --dataset for finetuning, none for --textvid; 'none' disables")
    g.add_argument("--eval_split", default="val")
    g.add_argument("--eval_batch_size", type=int, default=None, help="default: --batch_size")
    g.add_argument("--log_every", type=int, default=50, help="log.jsonl line every N iterations (0: off)")
    g.add_argument("--no_tensorboard", action="store_true")
    return p


def get_args(argv=None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    if args.dataset == "textvid":
        args.textvid = True
    if args.textvid:
        args.dataset = "textvid"
    if args.finetune and not args.resume:
        raise SystemExit("--finetune needs --resume <TOPA checkpoint> (without a checkpoint it is the baseline)")
    if args.eval_datasets is None:
        args.eval_datasets = "" if args.textvid else args.dataset
    if args.eval_datasets.lower() == "none":
        args.eval_datasets = ""
    if args.accum_iter < 1:
        raise SystemExit("--accum_iter must be >= 1")
    return args


def seed_everything(seed: int):
    import numpy as np
    import torch
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def main(args):
    if args.dry_run:
        print(vars(args))
        return None

    import torch
    from torch.utils.data import DataLoader

    import engine
    from dataloader.registry import build_mcqa_dataset, type_groups_for
    from dataloader.textvid import TextVidDataset
    from dataloader.training import MCQATrainDataset, TaskBatchSampler, TrainCollate
    from llama.build import load_topa, resolve_dtype
    from llama.checkpoint import load_memory
    from llama.prompts import PromptBuilder
    from util import dist
    from util.logging import RunLogger
    from util.schedule import absolute_lr, param_groups
    from util.train_state import (check_optimizer_state, restore_rng, save_checkpoint, training_state)

    rank, world, device = dist.init_distributed(args.device)
    seed_everything(args.seed)  # same on every rank: fresh TOPA parameters start equal (DDP checks it)
    dtype = resolve_dtype(args.precision, device)
    if args.lr is None:
        args.lr = absolute_lr(args.blr, args.batch_size, args.accum_iter, world)
    out = Path(args.output_dir)
    main_rank = dist.is_main()
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{'finetune' if args.finetune else 'resume' if args.resume else 'train'}: world size {world}, "
              f"device {device}, backbone {dtype}, lr {args.lr:.3e} (effective batch "
              f"{args.batch_size * args.accum_iter * world})", flush=True)

    model, tok, ckpt = load_topa(args, device, dtype, resume=args.resume)
    builder = PromptBuilder(tok, args.max_feats)

    # ---- data ----
    if args.textvid:
        train_ds = TextVidDataset(args.data_root, builder, args.max_feats, seed=args.seed, variance=args.variance,
                                  answer_balance=args.answer_balance, video_caption=args.video_caption,
                                  openvqa=args.openvqa, vaq=args.vaq, qav=args.qav)
    else:
        for flag in ("video_caption", "openvqa", "answer_balance"):
            if getattr(args, flag) and main_rank:
                print(f"warning: --{flag} applies to --textvid only; ignored for {args.dataset}")
        base = build_mcqa_dataset(args.dataset, args.data_root, args.train_split, builder, args.max_feats,
                                  train=True, skip_missing=args.skip_missing, sub=args.sub,
                                  dialogue_max_len=args.max_seq_len if args.truncate_dialogue else None)
        train_ds = MCQATrainDataset(base, vaq=args.vaq, qav=args.qav)
    sampler = TaskBatchSampler(len(train_ds), args.batch_size, rank, world, seed=args.seed,
                               caption_prob=0.5 if (args.textvid and args.video_caption) else 0.0)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=TrainCollate(args.max_seq_len),
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    eval_sets = [(name, build_mcqa_dataset(name, args.data_root, args.eval_split, builder, args.max_feats,
                                           skip_missing=args.skip_missing, sub=args.sub,
                                           dialogue_max_len=args.max_seq_len if args.truncate_dialogue and
                                           name == "tvqa" else None))
                 for name in filter(None, (s.strip() for s in args.eval_datasets.split(",")))]
    memory = None
    if args.memory and eval_sets:
        memory = load_memory(args.memory_path or os.path.join(args.data_root, "textvid", "memory.pkl")).to(device)

    # ---- model, optimizer ----
    step = engine.TrainStep(model, tau=args.tau)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        frozen = [f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad]
        DDP._set_params_and_buffers_to_ignore_for_model(step, frozen)  # the backbone is loaded on every rank
        step = DDP(step, device_ids=None)
    optimizer = torch.optim.AdamW(param_groups(model.trainable_parameters(), args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    start_epoch, best = args.start_epoch, None
    if ckpt is not None and not args.finetune:
        check_optimizer_state(ckpt, model, args.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        for g, fresh in zip(optimizer.param_groups, param_groups([], args.weight_decay)):
            g["weight_decay"] = fresh["weight_decay"]  # the flags decide (the same for an exact resume)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"]) + 1
        best = ckpt.get("best")
        restore_rng(ckpt.get("rng"))
        saved = ckpt.get("sampler") or {}
        now = sampler.state_dict()
        diff = {k: (saved[k], now[k]) for k in ("seed", "n", "batch_size", "world_size") if k in saved and saved[k] != now[k]}
        if diff and main_rank:
            print(f"warning: resuming with a different data setup {diff}: the data order will not match the "
                  "original run's", flush=True)
        if main_rank:
            print(f"resumed {args.resume}: epoch {ckpt['epoch']} done, continuing at epoch {start_epoch}", flush=True)
    elif ckpt is not None and main_rank:
        print(f"finetuning from {args.resume} (weights only)", flush=True)
    del ckpt

    logger = RunLogger(out, enabled=main_rank, tensorboard=not args.no_tensorboard)
    if start_epoch >= args.epochs and main_rank:
        print(f"nothing to do: start epoch {start_epoch} >= --epochs {args.epochs}")
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        stats = engine.train_one_epoch(step, model, loader, optimizer, epoch, args, device, scaler, logger)
        evals = {}
        for name, ds in eval_sets:
            res = engine.evaluate(model, ds, batch_size=args.eval_batch_size or args.batch_size, device=device,
                                  memory=memory, max_seq_len=args.max_seq_len, num_workers=args.num_workers,
                                  desc=f"eval {name}")
            if main_rank:
                acc = engine.write_eval_outputs(res, out / "eval" / f"epoch_{epoch}", name, args.eval_split,
                                                type_groups_for(name))
                evals[name] = acc["total"]["acc"] if acc else float("nan")
                print(engine.format_table(acc, f"epoch {epoch} {name} {args.eval_split}"), flush=True)
                logger.write("eval", {"epoch": epoch, "dataset": name, **{f"acc_{k}": v["acc"] for k, v in acc.items()}},
                             step=epoch)
        step.train()
        also = ("last",)
        if main_rank:
            if evals:
                metric = sum(evals.values()) / len(evals)
                if best is None or metric > best["acc"]:
                    best = {"epoch": epoch, "acc": metric, "datasets": dict(evals)}
                    also = ("last", "best")
            path = save_checkpoint(out, training_state(model, optimizer, scaler, epoch, args,
                                                       sampler.state_dict(), best), also)
            logger.write("epoch", {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()},
                                   **{f"val_{k}": v for k, v in evals.items()}, "checkpoint": str(path)}, step=epoch)
        dist.barrier()
    logger.close()
    dist.barrier()
    dist.cleanup()
    return best


if __name__ == "__main__":
    main(get_args())
