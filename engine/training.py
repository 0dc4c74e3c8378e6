"""train.py's run: TextVid pre-alignment, finetuning, the baseline. It builds the data, the model and the
optimizer (or resumes them), runs one epoch at a time (engine/epoch.py), evaluates after each
(engine/scoring.py, through the inference core) and checkpoints (engine/checkpointing.py). Only the TOPA
parameters train (`llama.adapter.is_trainable`); the backbone is frozen."""
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloader import benchmarks
from dataloader.textvid import TextVidDataset
from dataloader.train_batches import MCQATrainDataset, TaskBatchSampler, TrainCollate
from llama.adapter import TOPA
from llama.build import load_tokenizer_for, load_topa, resolve_dtype
from llama.memory import load_memory
from text.prompts import PromptBuilder
from util import dist
from util.errors import ConfigError
from util.files import claim_output_dir
from util.logging import RunLogger
from util.schedule import param_groups

from . import scoring
from .checkpointing import (Resumed, check_output_dir, checkpoint_name, prepare_resume_dir, resume_training,
                            save_checkpoint, training_state)
from .config import TrainConfig
from .epoch import EpochTotals, train_one_epoch
from .losses import TrainStep

CHECKPOINT_SPACE = 512 << 20  # free bytes an --output_dir needs (a 13B checkpoint with its optimizer: ~200 MB)


# ---------------------------------------------------------------- the run of train.py

def seed_everything(seed: int):
    import random

    import numpy as np
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def build_train_data(cfg: TrainConfig, builder: PromptBuilder, rank: int, world: int, device):
    """The training dataset (TextVid or a benchmark's train split) and its loader."""
    if cfg.textvid:
        ds = TextVidDataset(cfg.data.data_root, builder, seed=cfg.run.seed, variance=cfg.variance,
                            answer_balance=cfg.answer_balance, video_caption=cfg.video_caption,
                            openvqa=cfg.openvqa, vaq=cfg.vaq, qav=cfg.qav)
    else:
        for flag in ("video_caption", "openvqa", "answer_balance"):
            if getattr(cfg, flag) and dist.is_main():
                print(f"warning: --{flag} applies to --textvid only; ignored for {cfg.data.dataset}", file=sys.stderr)
        base = benchmarks.build_mcqa_dataset(cfg.data.dataset, cfg.data.data_root, cfg.train_split, builder,
                                             train=True, skip_missing=cfg.data.skip_missing, sub=cfg.data.sub,
                                             dialogue_max_len=cfg.data.dialogue_max_len(cfg.data.dataset))
        ds = MCQATrainDataset(base, vaq=cfg.vaq, qav=cfg.qav)
    sampler = TaskBatchSampler(len(ds), cfg.data.batch_size, rank, world, seed=cfg.run.seed,
                               caption_prob=cfg.caption_prob, lengths=ds.lengths() if cfg.group_by_length else None)
    # its own generator (seeded per epoch in `run`) draws the workers' seeds, so that starting an
    # epoch's iterator does not advance the global RNG that checkpoints save and restore
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=TrainCollate(cfg.data.max_seq_len),
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
    return loader, sampler


def build_eval_sets(cfg: TrainConfig, builder: PromptBuilder):
    """The --eval_datasets splits; each needs answers (its accuracy picks checkpoint_best.pth)."""
    sets = []
    for name in cfg.eval_datasets:
        ds = benchmarks.build_mcqa_dataset(name, cfg.data.data_root, cfg.eval_split, builder,
                                           skip_missing=cfg.data.skip_missing,
                                           sub=cfg.data.sub and benchmarks.get(name).subtitles,
                                           dialogue_max_len=cfg.data.dialogue_max_len(name))
        if not any(r.answer is not None for r in ds.records):
            raise ConfigError(f"--eval_datasets {name} --eval_split {cfg.eval_split}: no question of that split has "
                              "an answer, so no accuracy can be computed (choose a split with answers, or 'none')")
        sets.append((name, ds))
    return sets


def evaluate_epoch(cfg: TrainConfig, model, eval_sets, memory, device, epoch: int, out: Path, logger) -> dict:
    """Zero-shot accuracy of every --eval_datasets set after an epoch -> {name: total acc} (rank 0)."""
    evals = {}
    for name, ds in eval_sets:
        res = scoring.evaluate(model, ds, batch_size=cfg.eval_batch_size or cfg.data.batch_size, device=device,
                               memory=memory, max_seq_len=cfg.data.max_seq_len,
                               num_workers=cfg.data.num_workers, desc=f"eval {name}")

        def write(name=name, res=res):
            acc = scoring.write_eval_outputs(res, out / "eval" / f"epoch_{epoch}", name, cfg.eval_split,
                                             benchmarks.get(name).type_groups)
            evals[name] = acc["total"]["acc"]
            print(scoring.format_table(acc, f"epoch {epoch} {name} {cfg.eval_split}"), flush=True)
            logger.write("eval", {"epoch": epoch, "dataset": name, **{f"acc_{k}": v["acc"] for k, v in acc.items()}},
                         step=epoch)
        dist.on_main(write)  # rank 0 writes; its error (a full disk) ends every rank with the same line
    return evals


@dataclass
class Training:
    """What a run of train.py trains with, built once (`build_training`)."""
    model: TOPA
    step: nn.Module                 # TrainStep
    optimizer: torch.optim.Optimizer
    scaler: Optional["torch.amp.GradScaler"]
    loader: DataLoader
    sampler: TaskBatchSampler
    eval_sets: list
    memory: Optional[torch.Tensor]
    resumed: Resumed


def build_training(cfg: TrainConfig, out: Path, world: int, device, dtype) -> Training:
    """Data first (annotations, features, memory are checked in seconds), then the backbone (minutes for
    13B), the optimizer, and the state of a resumed run."""
    tok = load_tokenizer_for(cfg.model)
    builder = PromptBuilder(tok, cfg.model.max_feats)
    loader, sampler = build_train_data(cfg, builder, dist.rank(), world, device)
    eval_sets = build_eval_sets(cfg, builder)
    memory = load_memory(cfg.data.memory_file) if cfg.data.memory and eval_sets else None
    model, _, ckpt = load_topa(cfg.model, device, dtype, tokenizer=tok, resume=cfg.resume)
    model.grad_checkpointing = cfg.grad_checkpointing
    memory = memory.to(device) if memory is not None else None

    step = TrainStep(model, tau=cfg.tau)
    dist.broadcast_parameters([p for _, p in model.trainable_parameters()])  # gradients: util/dist.py
    optimizer = torch.optim.AdamW(param_groups(model.trainable_parameters(), cfg.optim.weight_decay),
                                  lr=cfg.optim.absolute_lr(cfg.data.batch_size, world), betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    resumed = Resumed(cfg.start_epoch)
    if ckpt is not None and cfg.resume is not None and not cfg.finetune:
        resumed = resume_training(ckpt, cfg.resume, model, optimizer, scaler, sampler, cfg, world, device)
        dist.on_main(prepare_resume_dir, out, cfg.resume, resumed.position)
    elif ckpt is not None and dist.is_main():
        print(f"finetuning from {cfg.resume} (weights only)", flush=True)
    return Training(model, step, optimizer, scaler, loader, sampler, eval_sets, memory, resumed)


def end_epoch(cfg: TrainConfig, t: Training, epoch: int, stats: dict, evals: dict, best: Optional[dict], out: Path,
              logger) -> Optional[dict]:
    """Rank 0: the best record so far, the epoch's log line, then its checkpoint (and checkpoint_best.pth
    when the evaluation improved). Returns the best record."""
    also = ("last",)
    if evals:
        metric = sum(evals.values()) / len(evals)
        if best is None or metric > best["acc"]:
            best = {"epoch": epoch, "acc": metric, "datasets": dict(evals)}
            also = ("last", "best")
    # the epoch's line first: a kill between the two leaves a line that a resume drops
    logger.write("epoch", {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()},
                           **{f"val_{k}": v for k, v in evals.items()},
                           "checkpoint": str(out / checkpoint_name(epoch))}, step=epoch)
    save_checkpoint(out, training_state(t.model, t.optimizer, t.scaler, epoch, cfg, t.sampler.state_dict(), best),
                    also)
    return best


def run(cfg: TrainConfig) -> Optional[dict]:
    """train.py: build, (resume,) train epoch by epoch, evaluate and checkpoint after each (and every
    --save_every iterations). Returns the best evaluation record (rank 0; None without --eval_datasets).

    The output folder belongs to one run: checked before the model loads (`check_output_dir`), and on
    `--resume` cut back to the checkpoint (`prepare_resume_dir`); it is locked for this run until it ends
    (`claim_output_dir`: a second run into it is refused at once)."""
    rank, world, device = dist.init_distributed(cfg.run.device)
    with claim_output_dir(cfg.run.output_dir, need_bytes=CHECKPOINT_SPACE) as out:
        return _train(cfg, out, rank, world, device)


def _train(cfg: TrainConfig, out: Path, rank: int, world: int, device) -> Optional[dict]:
    main_rank = dist.is_main()
    dist.on_main(check_output_dir, out, cfg.resume, cfg.resume is not None and not cfg.finetune, cfg.overwrite)
    seed_everything(cfg.run.seed)  # same on every rank: fresh TOPA parameters start equal
    dtype = resolve_dtype(cfg.model.precision, device)
    if main_rank:
        print(f"{'finetune' if cfg.finetune else 'resume' if cfg.resume else 'train'}: world size {world}, "
              f"device {device}, backbone {dtype}, lr {cfg.optim.absolute_lr(cfg.data.batch_size, world):.3e} "
              f"(effective batch {cfg.data.batch_size * cfg.optim.accum_iter * world})", flush=True)
    t = build_training(cfg, out, world, device, dtype)
    resumed, best = t.resumed, t.resumed.best

    def save_mid_epoch(epoch: int, done: int, totals: EpochTotals):
        def save():
            state = training_state(t.model, t.optimizer, t.scaler, epoch, cfg, t.sampler.state_dict(), best,
                                   iteration=done, epoch_totals=asdict(totals))
            tqdm.write(f"saved {save_checkpoint(out, state, ('last',))}")
        dist.on_main(save)  # rank 0 writes; its error (a full disk) ends every rank with the same line

    logger = RunLogger(out, enabled=main_rank, tensorboard=cfg.tensorboard)
    epochs = cfg.optim.epochs
    if resumed.epoch >= epochs and main_rank:
        print(f"nothing to do: start epoch {resumed.epoch} >= --epochs {epochs}")
    last = epochs if cfg.stop_after is None else min(epochs, resumed.epoch + cfg.stop_after)
    for epoch in range(resumed.epoch, last):
        first = resumed.iteration if epoch == resumed.epoch else 0
        t.sampler.set_epoch(epoch, first)
        t.loader.generator.manual_seed(cfg.run.seed * 1_000_003 + epoch)
        totals = EpochTotals.resumed(resumed.epoch_totals, rank) if first else None
        stats = train_one_epoch(t.step, t.model, t.loader, t.optimizer, epoch, cfg, device, t.scaler, logger,
                                start=first, totals=totals, save=partial(save_mid_epoch, epoch))
        evals = evaluate_epoch(cfg, t.model, t.eval_sets, t.memory, device, epoch, out, logger)
        t.step.train()
        new_best = dist.on_main(end_epoch, cfg, t, epoch, stats, evals, best, out, logger)  # as save_mid_epoch
        best = new_best if main_rank else best
    logger.close()
    dist.barrier()
    dist.cleanup()
    return best
