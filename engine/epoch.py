"""One training epoch: `train_one_epoch` runs an `Epoch` of small steps (lr, forward + backward, optimizer
step, host-side counts, sync, checks, mid-epoch save) over a loader of TrainBatches, and returns the
epoch's mean losses and counts. engine/training.py (train.py's run) calls it once per epoch. Only the
TOPA parameters train (`llama.adapter.is_trainable`); the backbone is frozen."""
import math
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from llama.adapter import TOPA
from util import dist
from util.schedule import lr_at, set_lr

from .config import TrainConfig
from .losses import total_loss



def _reduce_sums(values: List[float], device) -> List[float]:
    if not dist.is_dist():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


LOSS_PARTS = ("vqa", "caption", "vaq", "qav")
SYNC_EVERY = 50   # iterations between host syncs of the loss values when --log_every is 0
SKIP_LIMIT = 25   # fp16: optimizer steps skipped in a row (loss scale / 2**25) before the run stops


@dataclass
class EpochTotals:
    """An epoch's running totals, on the host: sums of the synced loss values and counts. The loss sums,
    item and token counts are this rank's (summed over ranks at the end of the epoch); the step counts
    are the same on every rank (the GradScaler decides on all-reduced gradients). A mid-epoch checkpoint
    stores them summed over ranks: on resume rank 0 starts from those, the other ranks from zero."""
    sums: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(("loss",) + LOSS_PARTS, 0.0))
    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(("loss",) + LOSS_PARTS, 0))
    items: int = 0
    tokens: int = 0
    too_long: int = 0
    cut: int = 0
    nonfinite: int = 0      # iterations whose loss was not finite (fp16: their step is skipped)
    longest: int = 0        # longest item over max_seq_len (max over ranks)
    steps: int = 0          # optimizer steps, and how many of them the GradScaler skipped
    skipped: int = 0
    skipped_in_row: int = 0
    seconds: float = 0.0

    PER_RANK = ("items", "tokens", "too_long", "cut", "nonfinite")

    def summed(self, device) -> "EpochTotals":
        """The totals over all ranks (a collective: every rank calls it at the same point)."""
        keys = list(self.sums)
        red = _reduce_sums([self.sums[k] for k in keys] + [self.counts[k] for k in keys]
                           + [getattr(self, k) for k in self.PER_RANK], device)
        n = len(keys)
        return replace(self, sums=dict(zip(keys, red[:n])), counts={k: int(v) for k, v in zip(keys, red[n:2 * n])},
                       longest=max(dist.gather_objects(self.longest)),
                       **{k: int(v) for k, v in zip(self.PER_RANK, red[2 * n:])})

    @classmethod
    def resumed(cls, saved: Optional[dict], rank: int) -> "EpochTotals":
        """This rank's share of totals saved summed over ranks."""
        t = cls(**saved) if saved else cls()
        if rank != 0:
            t = replace(t, sums=dict.fromkeys(t.sums, 0.0), counts=dict.fromkeys(t.counts, 0), longest=0,
                        **dict.fromkeys(cls.PER_RANK, 0))
        return t


@dataclass
class IterLoss:
    """One iteration's synced values: the total loss and its parts, the batch items, and for the
    iteration that ends an accumulation cycle (without a GradScaler) the gradient norm of its optimizer
    step and the items of the whole cycle."""
    it: int
    lr: float
    ids: List[str]
    loss: float
    parts: Dict[str, float]
    grad_norm: Optional[float] = None
    cycle_ids: Optional[List[str]] = None

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and (self.grad_norm is None or math.isfinite(self.grad_norm))

    def describe(self, epoch: int, rank: Optional[int] = None) -> str:
        where = f"epoch {epoch} iteration {self.it}" + (f" (rank {rank})" if rank is not None else "")
        parts = ", ".join(f"{k} {v:.4g}" for k, v in self.parts.items())
        if math.isfinite(self.loss):
            return (f"{where}: gradient norm {self.grad_norm} of the optimizer step (loss {self.loss:.4g}: {parts}); "
                    f"batch items of its accumulation cycle {', '.join(self.cycle_ids or self.ids)}")
        return f"{where}: loss {self.loss} ({parts}); batch items {', '.join(self.ids)}"


class LossWindow:
    """The loss values of the iterations since the last host sync, kept on the device: `add` costs one
    small stack, `sync` one device-to-host copy for all of them."""

    def __init__(self):
        self.rows = []

    def add(self, it: int, lr: float, ids: List[str], total: torch.Tensor, losses: Dict[str, torch.Tensor],
            grad_norm: Optional[torch.Tensor] = None, cycle_ids: Optional[List[str]] = None):
        vals = [total, *losses.values()] + ([grad_norm] if grad_norm is not None else [])
        self.rows.append((it, lr, ids, cycle_ids, list(losses), grad_norm is not None,
                          torch.stack([v.detach().float().reshape(()) for v in vals])))

    def sync(self) -> List[IterLoss]:
        if not self.rows:
            return []
        flat = torch.cat([r[-1] for r in self.rows]).tolist()   # the host sync
        out, i = [], 0
        for it, lr, ids, cycle_ids, names, has_norm, _ in self.rows:
            n = 1 + len(names)
            out.append(IterLoss(it, lr, ids, flat[i], dict(zip(names, flat[i + 1:i + n])),
                                flat[i + n] if has_norm else None, cycle_ids))
            i += n + has_norm
        self.rows = []
        return out


@torch.no_grad()
def step_if_finite(optimizer: torch.optim.Optimizer, params: List[torch.Tensor], ok: torch.Tensor):
    """`optimizer.step()`, undone on the device where `ok` (a 0-dim bool tensor, here: the gradient norm
    is finite) is False: the parameters and their state tensors (AdamW's moments) keep their values, and
    state that this step created (the first step's) is zeroed. No host sync: a non-finite update never
    reaches the weights while the run goes on to its next sync, which then stops it (hence the step
    counter is not rolled back). `ok` is the same on every rank: the gradients are all-reduced."""
    kept, fresh = [], []
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            fresh.append(p)
        kept += [(t, t.clone()) for t in [p] + [v for v in (state or {}).values()
                                                if torch.is_tensor(v) and v.shape == p.shape]]
    optimizer.step()
    for t, before in kept:
        t.copy_(torch.where(ok, t, before))
    for p in fresh:
        for v in optimizer.state.get(p, {}).values():
            if torch.is_tensor(v) and v.shape == p.shape:
                v.copy_(torch.where(ok, v, 0.0))


def train_one_epoch(step: nn.Module, model: TOPA, loader, optimizer: torch.optim.Optimizer, epoch: int,
                    cfg: TrainConfig, device, scaler: Optional["torch.amp.GradScaler"] = None, logger=None,
                    start: int = 0, totals: Optional[EpochTotals] = None, save=None) -> dict:
    """One epoch of `loader` (TrainBatches), from its batch `start` (resuming a mid-epoch checkpoint,
    with that checkpoint's `totals`). `step` is the TrainStep.

    Per iteration: the lr is set at each accumulation boundary from e = it/len(loader) + epoch;
    loss / accum_iter is backpropagated (under torchrun, the gradients are averaged over the ranks once per
    accumulation cycle, before its step); the optimizer steps every accum_iter iterations. The last, possibly shorter,
    cycle of the epoch also steps, its gradient rescaled to the mean over the iterations it holds.
    `save(iterations_done, totals summed over ranks)` is called every `--save_every` iterations (at an
    accumulation boundary, after the step: no gradient is pending) except at the epoch's end.

    Host syncs: the losses (and, without a GradScaler, each step's gradient norm) stay on the device
    and reach the host every `--log_every` iterations (SYNC_EVERY when it is 0), before a mid-epoch
    checkpoint and at the epoch's end. That is where non-finite values are caught:
    - bf16 / fp32: a non-finite loss or gradient norm on any rank stops every rank (an all-reduced flag
      at each sync) with one message naming the epoch, iteration, rank, loss parts and batch items.
      Until that sync, an optimizer step whose gradient norm is not finite is undone on the device
      (`step_if_finite`), and every checkpoint follows a sync that found the values finite.
    - fp16: the GradScaler skips a step whose gradients are not finite (and reads that flag every step
      itself). Skipped steps are counted; SKIP_LIMIT skipped in a row, or every step of an epoch
      skipped, stops the run with an error before any checkpoint of that epoch is written.
    Returns the epoch's mean losses (averaged over ranks) and counts."""
    return Epoch(step, model, loader, optimizer, epoch, cfg, device, scaler, logger, start, totals).run(save)


class Epoch:
    """One epoch's state (totals, the loss window, the accumulation cycle) and its steps, in the order
    `run` takes them: lr, forward + backward, optimizer step, host-side counts, sync, checks, save."""

    def __init__(self, step, model, loader, optimizer, epoch, cfg, device, scaler, logger, start, totals):
        self.step, self.loader, self.optimizer, self.epoch = step, loader, optimizer, epoch
        self.cfg, self.opt, self.device, self.scaler = cfg, cfg.optim, device, scaler
        self.logger, self.start = logger, start
        self.n_iter = len(loader)
        self.trainable = [p for _, p in model.trainable_parameters()]
        self.totals = totals or EpochTotals()
        self.window, self.first_nonfinite, self.cycle_ids = LossWindow(), [], []
        self.lr_max = self.opt.absolute_lr(cfg.data.batch_size, dist.world_size())
        self.lr = optimizer.param_groups[-1]["lr"]
        self.scale = scaler.get_scale() if scaler is not None else None
        self.t0, self.seconds0 = time.time(), self.totals.seconds
        self.bar = None

    def run(self, save=None) -> dict:
        cfg, totals, accum = self.cfg, self.totals, self.opt.accum_iter
        sync_every = cfg.log_every or SYNC_EVERY
        self.step.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.bar = tqdm(self.loader, total=self.n_iter, initial=self.start, desc=f"epoch {self.epoch}",
                        disable=not dist.is_main(), dynamic_ncols=True)
        for it, tb in enumerate(self.bar, self.start):
            if it % accum == 0:
                self.lr = lr_at(it / self.n_iter + self.epoch, self.lr_max, self.opt.min_lr, self.opt.warmup_epochs,
                                self.opt.epochs)
                set_lr(self.optimizer, self.lr)
            boundary = (it + 1) % accum == 0 or it + 1 == self.n_iter
            loss, losses = self.forward_backward(tb)
            self.cycle_ids += tb.ids
            grad_norm = self.optimizer_step(it) if boundary else None
            self.window.add(it, self.lr, tb.ids, loss, losses, grad_norm,
                            self.cycle_ids if grad_norm is not None else None)
            if boundary:
                self.cycle_ids = []
            self.count(tb)
            if (it + 1) % sync_every == 0:
                self.sync()
            if self.scaler is not None and totals.skipped_in_row >= SKIP_LIMIT:
                self.diverged(f"{totals.skipped_in_row} optimizer steps in a row (up to iteration {it})")
            if save is not None and cfg.save_every and (it + 1) % cfg.save_every == 0 and it + 1 < self.n_iter:
                self.sync()
                totals.seconds = self.seconds0 + time.time() - self.t0
                save(it + 1, totals.summed(self.device))
        self.sync()
        if self.scaler is not None and totals.steps and totals.skipped == totals.steps:
            self.diverged(f"all {totals.steps} optimizer steps of the epoch")
        totals.seconds = self.seconds0 + time.time() - self.t0
        return self.report(totals.summed(self.device))

    def forward_backward(self, tb):
        """Every loss of the batch and their total; total / accum_iter backpropagated into the gradients
        this rank accumulates over the cycle."""
        scaler = self.scaler
        tb.to(self.device)
        losses = self.step(tb)
        loss = total_loss(losses, self.opt.weight_captioning)
        scaled = loss / self.opt.accum_iter
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        return loss, losses

    def optimizer_step(self, it: int) -> Optional[torch.Tensor]:
        """The step that ends an accumulation cycle; returns its gradient norm (on the device; None
        with a GradScaler, which counts its skipped steps instead)."""
        opt, scaler, trainable, totals = self.opt, self.scaler, self.trainable, self.totals
        dist.average_gradients(trainable)   # the cycle's gradients, averaged over the ranks (util/dist.py)
        held = it % opt.accum_iter + 1
        if held < opt.accum_iter:  # a short last cycle: make it a mean over the iterations it holds
            for p in trainable:
                if p.grad is not None:
                    p.grad.mul_(opt.accum_iter / held)
        grad_norm = None
        if scaler is not None:
            if opt.clip_grad:
                scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, opt.clip_grad)
            scaler.step(self.optimizer)
            scaler.update()
            # GradScaler.step has just read its found-inf flag on the host: this read adds no wait
            new_scale = scaler.get_scale()
            skipped = new_scale < self.scale    # the scale only shrinks on a skipped step
            self.scale = new_scale
            totals.skipped += skipped
            totals.skipped_in_row = totals.skipped_in_row + 1 if skipped else 0
        else:
            grads = [p.grad for p in trainable if p.grad is not None]
            grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, opt.clip_grad) if opt.clip_grad
                         else torch.nn.utils.get_total_norm(grads))
            step_if_finite(self.optimizer, trainable, torch.isfinite(grad_norm))
        totals.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def count(self, tb):
        """Host-side bookkeeping of a batch (no device values)."""
        totals, max_seq_len = self.totals, self.cfg.data.max_seq_len
        totals.items += tb.n_items
        totals.tokens += tb.n_tokens
        totals.cut += tb.n_cut
        if tb.too_long:
            if totals.too_long == 0 and dist.is_main():
                idx, n = tb.too_long[0]
                tqdm.write(f"note: training item {idx} has {n} tokens > max_seq_len={max_seq_len}; such "
                           "items are kept whole (never cut) and counted (reported at the end of the epoch)")
            totals.too_long += len(tb.too_long)
            totals.longest = max(totals.longest, max(n for _, n in tb.too_long))

    def sync(self):
        """Bring the window's values to the host: totals, log lines, progress bar; stop on non-finite."""
        bad, r = None, None
        for r in self.window.sync():
            self.tally(r)
            if not r.finite:
                bad = bad or r
                if not self.first_nonfinite:
                    self.first_nonfinite.append(r)
        if r is not None:
            self.bar.set_postfix(loss=f"{r.loss:.4f}", lr=f"{r.lr:.3e}", **{k: f"{v:.4f}" for k, v in r.parts.items()})
        if self.scaler is None and (_reduce_sums([float(bad is not None)], self.device)[0] if dist.is_dist() else bad):
            found = [(i, b) for i, b in enumerate(dist.gather_objects(bad)) if b is not None]
            ranks = dist.world_size() > 1
            raise FloatingPointError("non-finite training values at " + "; ".join(
                b.describe(self.epoch, i if ranks else None) for i, b in found)
                + ". Stopped on every rank; no checkpoint was written after it (try a lower --lr, or check "
                  "these items' features)")

    def tally(self, r: IterLoss):
        """One synced iteration into the totals and, every --log_every iterations, the log."""
        totals, cfg = self.totals, self.cfg
        if math.isfinite(r.loss):
            totals.sums["loss"] += r.loss
            totals.counts["loss"] += 1
            for k, v in r.parts.items():
                totals.sums[k] += v
                totals.counts[k] += 1
        else:
            totals.nonfinite += 1
        if self.logger is not None and cfg.log_every and (r.it + 1) % cfg.log_every == 0:
            self.logger.write("iter", {"epoch": self.epoch, "iter": r.it + 1, "lr": r.lr, "loss": r.loss, **r.parts,
                                       **({"grad_norm": r.grad_norm} if r.grad_norm is not None else {})},
                              step=self.epoch * self.n_iter + r.it + 1)

    def diverged(self, what: str):
        self.sync()
        firsts = [f[0] for f in dist.gather_objects(self.first_nonfinite[:1]) if f]
        first = f"; the first non-finite loss: {firsts[0].describe(self.epoch)}" if firsts else ""
        raise FloatingPointError(f"fp16 training diverged at epoch {self.epoch}: the gradient scaler skipped {what} "
                                 f"(loss scale now {self.scaler.get_scale():g}){first}. Stopped before writing a "
                                 "checkpoint; try --precision bf16 or a lower --lr")

    def report(self, tot: EpochTotals) -> dict:
        """The epoch's mean losses and counts over the ranks; rank 0 prints them."""
        epoch, max_seq_len = self.epoch, self.cfg.data.max_seq_len
        stats = {k: tot.sums[k] / tot.counts[k] for k in tot.sums if tot.counts[k]}
        stats.update({"lr": self.lr, "iters": self.n_iter, "items": tot.items, "too_long": tot.too_long,
                      "dialogue_cut": tot.cut, "nonfinite": tot.nonfinite, "steps": tot.steps,
                      "skipped_steps": tot.skipped, "tokens_per_s": tot.tokens / max(tot.seconds, 1e-9),
                      "seconds": tot.seconds})
        if dist.is_main():
            msg = f"epoch {epoch}: " + ", ".join(f"{k} {stats[k]:.4f}" for k in ("loss",) + LOSS_PARTS if k in stats)
            print(msg, flush=True)
            if tot.skipped:
                print(f"epoch {epoch}: the fp16 gradient scaler skipped {tot.skipped} of {tot.steps} optimizer steps "
                      "(non-finite gradients)", flush=True)
            if tot.cut:
                print(f"epoch {epoch}: {tot.cut} of {tot.items} training items had their dialogue cut to fit "
                      f"max_seq_len={max_seq_len} (--truncate_dialogue)", flush=True)
            if tot.too_long:
                print(f"epoch {epoch}: {tot.too_long} of {tot.items} training items were longer than max_seq_len="
                      f"{max_seq_len} (longest {tot.longest} tokens); they were kept whole, not cut "
                      "(batches are padded to their longest item)", flush=True)
        return stats
