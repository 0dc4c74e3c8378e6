"""Training: the losses, one epoch, and the whole run of train.py (TextVid pre-alignment, finetuning,
the baseline). Only the TOPA parameters train (`llama.adapter.is_trainable`); the backbone is frozen."""
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloader import benchmarks
from dataloader.packing import Batch
from dataloader.textvid import TextVidDataset
from dataloader.training import MCQATrainDataset, TaskBatchSampler, TrainBatch, TrainCollate
from llama.adapter import TOPA
from llama.build import load_topa, resolve_dtype
from llama.checkpoint import load_memory
from llama.prompts import PromptBuilder
from util import dist
from util.logging import RunLogger
from util.schedule import lr_at, param_groups, set_lr

from . import evaluation
from .checkpointing import resume_training, save_checkpoint, training_state
from .config import TrainConfig
from .evaluation import token_nll


def qav_loss(model: TOPA, batch: Batch, tau: float) -> torch.Tensor:
    """qav: the hidden state at slot position s+t-1 scores frame t against visual_proj(v) of all
    T frames (no temporal embedding) by dot product / tau; cross-entropy over the T frames, mean over
    the batch's frames. No g2 bias (nothing follows the video)."""
    h = model.hidden(batch.tokens, batch.positions, batch.mask, batch.video, batch.video_start, gate2=False)
    B, T, _ = batch.video.shape
    pos = batch.video_start[:, None] - 1 + torch.arange(T, device=h.device)     # [B, T]
    query = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1])).float()     # [B, T, D]
    keys = model.visual_proj(batch.video.to(model.visual_proj.weight.dtype)).float()  # [B, T, D]
    logits = query @ keys.transpose(1, 2) / tau                                 # [B, T(query), T(frame)]
    target = torch.arange(T, device=h.device).repeat(B)
    return F.cross_entropy(logits.reshape(B * T, T), target)


def span_loss(model: TOPA, batch: Batch) -> torch.Tensor:
    """Token cross-entropy over the scored spans, mean over the batch's span tokens."""
    return token_nll(model, batch, batch.video).mean()


class TrainStep(nn.Module):
    """One forward = every loss of a TrainBatch: {"vqa"|"caption": span loss, "vaq": span loss,
    "qav": frame loss}. This is the module DDP wraps (so its reducer sees every forward)."""

    def __init__(self, model: TOPA, tau: float = 100.0):
        super().__init__()
        self.model, self.tau = model, tau

    def forward(self, tb: TrainBatch) -> Dict[str, torch.Tensor]:
        return {task: qav_loss(self.model, b, self.tau) if task == "qav" else span_loss(self.model, b)
                for task, b in tb.parts.items()}


def total_loss(losses: Dict[str, torch.Tensor], weight_captioning: float = 1.0) -> torch.Tensor:
    """vqa + weight_captioning * vaq + qav. A caption batch's loss (summary / open QA) is weighted
    like vaq, as in the original, where it was computed in the vaq slot."""
    weights = {"vqa": 1.0, "qav": 1.0, "vaq": weight_captioning, "caption": weight_captioning}
    return sum(weights[k] * v for k, v in losses.items())


def _reduce_sums(values: List[float], device) -> List[float]:
    if not dist.is_dist():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


LOSS_PARTS = ("vqa", "caption", "vaq", "qav")


def train_one_epoch(step: nn.Module, model: TOPA, loader, optimizer: torch.optim.Optimizer, epoch: int,
                    cfg: TrainConfig, device, scaler: Optional["torch.amp.GradScaler"] = None, logger=None) -> dict:
    """One epoch of `loader` (TrainBatches). `step` is the TrainStep, DDP-wrapped under torchrun.

    Per iteration: the lr is set at each accumulation boundary from e = it/len(loader) + epoch;
    loss / accum_iter is backpropagated (DDP gradients are synchronised only on the step that ends an
    accumulation cycle); the optimizer steps every accum_iter iterations. The last, possibly shorter,
    cycle of the epoch also steps, its gradient rescaled to the mean over the iterations it holds.
    Returns the epoch's mean losses (averaged over ranks) and counts."""
    step.train()
    opt, max_seq_len = cfg.optim, cfg.data.max_seq_len
    accum = opt.accum_iter
    n_iter = len(loader)
    trainable = [p for _, p in model.trainable_parameters()]
    optimizer.zero_grad(set_to_none=True)
    sums = {k: 0.0 for k in ("loss",) + LOSS_PARTS}
    counts = {k: 0 for k in sums}
    n_items = n_too_long = longest_seen = n_tokens = n_nonfinite = n_cut = 0
    lr_max = opt.absolute_lr(cfg.data.batch_size, dist.world_size())
    lr = optimizer.param_groups[-1]["lr"]
    t0 = time.time()
    bar = tqdm(loader, total=n_iter, desc=f"epoch {epoch}", disable=not dist.is_main(), dynamic_ncols=True)
    for it, tb in enumerate(bar):
        if it % accum == 0:
            lr = lr_at(it / n_iter + epoch, lr_max, opt.min_lr, opt.warmup_epochs, opt.epochs)
            set_lr(optimizer, lr)
        boundary = (it + 1) % accum == 0 or it + 1 == n_iter
        sync = step.no_sync() if isinstance(step, nn.parallel.DistributedDataParallel) and not boundary \
            else nullcontext()
        tb.to(device)
        with sync:
            losses = step(tb)
            loss = total_loss(losses, opt.weight_captioning)
            loss_value = loss.item()
            if not math.isfinite(loss_value) and scaler is None:
                parts = {k: v.item() for k, v in losses.items()}
                raise FloatingPointError(f"loss is {loss_value} ({parts}) at epoch {epoch} iteration {it}; stopping")
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if boundary:
            held = it % accum + 1
            if held < accum:  # a short last cycle: make it a mean over the iterations it holds
                for p in trainable:
                    if p.grad is not None:
                        p.grad.mul_(accum / held)
            if scaler is not None:
                if opt.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, opt.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                if opt.clip_grad:
                    torch.nn.utils.clip_grad_norm_(trainable, opt.clip_grad)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # bookkeeping (a non-finite fp16 loss, whose step the GradScaler skips, is counted apart)
        if math.isfinite(loss_value):
            sums["loss"] += loss_value
            counts["loss"] += 1
            for k, v in losses.items():
                sums[k] += v.item()
                counts[k] += 1
        else:
            n_nonfinite += 1
        n_items += tb.n_items
        n_tokens += tb.n_tokens
        n_cut += tb.n_cut
        if tb.too_long:
            if n_too_long == 0 and dist.is_main():
                idx, n = tb.too_long[0]
                tqdm.write(f"note: training item {idx} has {n} tokens > max_seq_len={max_seq_len}; such "
                           "items are kept whole (never cut) and counted (reported at the end of the epoch)")
            n_too_long += len(tb.too_long)
            longest_seen = max(longest_seen, max(n for _, n in tb.too_long))
        shown = {k: f"{v.item():.4f}" for k, v in losses.items()}
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3e}", **shown)
        if logger is not None and cfg.log_every and (it + 1) % cfg.log_every == 0:
            logger.write("iter", {"epoch": epoch, "iter": it + 1, "lr": lr, "loss": loss_value,
                                  **{k: v.item() for k, v in losses.items()}},
                         step=epoch * n_iter + it + 1)

    keys = list(sums)
    red = _reduce_sums([sums[k] for k in keys] + [counts[k] for k in keys]
                       + [n_items, n_too_long, n_tokens, n_nonfinite, n_cut], device)
    S, C = red[:len(keys)], red[len(keys):2 * len(keys)]
    n_items, n_too_long, n_tokens, n_nonfinite, n_cut = (int(x) for x in red[2 * len(keys):])
    longest_seen = max(dist.gather_objects(longest_seen))
    elapsed = time.time() - t0
    stats = {k: S[i] / C[i] for i, k in enumerate(keys) if C[i]}
    stats.update({"lr": lr, "iters": n_iter, "items": n_items, "too_long": n_too_long, "dialogue_cut": n_cut,
                  "nonfinite": n_nonfinite,
                  "tokens_per_s": n_tokens / max(elapsed, 1e-9), "seconds": elapsed})
    if dist.is_main():
        msg = f"epoch {epoch}: " + ", ".join(f"{k} {stats[k]:.4f}" for k in ("loss",) + LOSS_PARTS if k in stats)
        print(msg, flush=True)
        if n_cut:
            print(f"epoch {epoch}: {n_cut} of {n_items} training items had their dialogue cut to fit max_seq_len="
                  f"{max_seq_len} (--truncate_dialogue)", flush=True)
        if n_too_long:
            print(f"epoch {epoch}: {n_too_long} of {n_items} training items were longer than max_seq_len="
                  f"{max_seq_len} (longest {longest_seen} tokens); they were kept whole, not cut "
                  "(batches are padded to their longest item)", flush=True)
    return stats


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
                print(f"warning: --{flag} applies to --textvid only; ignored for {cfg.data.dataset}")
        base = benchmarks.build_mcqa_dataset(cfg.data.dataset, cfg.data.data_root, cfg.train_split, builder,
                                             train=True, skip_missing=cfg.data.skip_missing, sub=cfg.data.sub,
                                             dialogue_max_len=cfg.data.dialogue_max_len(cfg.data.dataset))
        ds = MCQATrainDataset(base, vaq=cfg.vaq, qav=cfg.qav)
    sampler = TaskBatchSampler(len(ds), cfg.data.batch_size, rank, world, seed=cfg.run.seed,
                               caption_prob=cfg.caption_prob)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=TrainCollate(cfg.data.max_seq_len),
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    return loader, sampler


def build_eval_sets(cfg: TrainConfig, builder: PromptBuilder):
    return [(name, benchmarks.build_mcqa_dataset(name, cfg.data.data_root, cfg.eval_split, builder,
                                                 skip_missing=cfg.data.skip_missing,
                                                 sub=cfg.data.sub and benchmarks.get(name).subtitles,
                                                 dialogue_max_len=cfg.data.dialogue_max_len(name)))
            for name in cfg.eval_datasets]


def wrap_ddp(step: "TrainStep", model: TOPA):
    """DDP over the TOPA parameters only (the frozen backbone is loaded on every rank and never synced)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    frozen = [f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad]
    DDP._set_params_and_buffers_to_ignore_for_model(step, frozen)
    return DDP(step, device_ids=None)


def evaluate_epoch(cfg: TrainConfig, model, eval_sets, memory, device, epoch: int, out: Path, logger) -> dict:
    """Zero-shot accuracy of every --eval_datasets set after an epoch -> {name: total acc} (rank 0)."""
    evals = {}
    for name, ds in eval_sets:
        res = evaluation.evaluate(model, ds, batch_size=cfg.eval_batch_size or cfg.data.batch_size, device=device,
                                  memory=memory, max_seq_len=cfg.data.max_seq_len,
                                  num_workers=cfg.data.num_workers, desc=f"eval {name}")
        if dist.is_main():
            acc = evaluation.write_eval_outputs(res, out / "eval" / f"epoch_{epoch}", name, cfg.eval_split,
                                                benchmarks.get(name).type_groups)
            evals[name] = acc["total"]["acc"] if acc else float("nan")
            print(evaluation.format_table(acc, f"epoch {epoch} {name} {cfg.eval_split}"), flush=True)
            logger.write("eval", {"epoch": epoch, "dataset": name, **{f"acc_{k}": v["acc"] for k, v in acc.items()}},
                         step=epoch)
    return evals


def run(cfg: TrainConfig) -> Optional[dict]:
    """train.py: build, (resume,) train epoch by epoch, evaluate and checkpoint after each.
    Returns the best evaluation record (rank 0; None without --eval_datasets)."""
    rank, world, device = dist.init_distributed(cfg.run.device)
    seed_everything(cfg.run.seed)  # same on every rank: fresh TOPA parameters start equal (DDP checks it)
    dtype = resolve_dtype(cfg.model.precision, device)
    lr = cfg.optim.absolute_lr(cfg.data.batch_size, world)
    out, main_rank = Path(cfg.run.output_dir), dist.is_main()
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{'finetune' if cfg.finetune else 'resume' if cfg.resume else 'train'}: world size {world}, "
              f"device {device}, backbone {dtype}, lr {lr:.3e} (effective batch "
              f"{cfg.data.batch_size * cfg.optim.accum_iter * world})", flush=True)

    model, tok, ckpt = load_topa(cfg.model, device, dtype, resume=cfg.resume)
    builder = PromptBuilder(tok, model.args.max_feats)
    loader, sampler = build_train_data(cfg, builder, rank, world, device)
    eval_sets = build_eval_sets(cfg, builder)
    memory = load_memory(cfg.data.memory_file).to(device) if cfg.data.memory and eval_sets else None

    step = TrainStep(model, tau=cfg.tau)
    if world > 1:
        step = wrap_ddp(step, model)
    optimizer = torch.optim.AdamW(param_groups(model.trainable_parameters(), cfg.optim.weight_decay), lr=lr,
                                  betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    start_epoch, best = cfg.start_epoch, None
    if ckpt is not None and not cfg.finetune:
        start_epoch, best = resume_training(ckpt, cfg.resume, model, optimizer, scaler, sampler,
                                            cfg.optim.weight_decay)
    elif ckpt is not None and main_rank:
        print(f"finetuning from {cfg.resume} (weights only)", flush=True)
    del ckpt

    logger = RunLogger(out, enabled=main_rank, tensorboard=cfg.tensorboard)
    epochs = cfg.optim.epochs
    if start_epoch >= epochs and main_rank:
        print(f"nothing to do: start epoch {start_epoch} >= --epochs {epochs}")
    end_epoch = epochs if cfg.stop_after is None else min(epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(step, model, loader, optimizer, epoch, cfg, device, scaler, logger)
        evals = evaluate_epoch(cfg, model, eval_sets, memory, device, epoch, out, logger)
        step.train()
        if main_rank:
            also = ("last",)
            if evals:
                metric = sum(evals.values()) / len(evals)
                if best is None or metric > best["acc"]:
                    best = {"epoch": epoch, "acc": metric, "datasets": dict(evals)}
                    also = ("last", "best")
            path = save_checkpoint(out, training_state(model, optimizer, scaler, epoch, cfg, sampler.state_dict(),
                                                       best), also)
            logger.write("epoch", {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()},
                                   **{f"val_{k}": v for k, v in evals.items()}, "checkpoint": str(path)}, step=epoch)
        dist.barrier()
    logger.close()
    dist.barrier()
    dist.cleanup()
    return best
