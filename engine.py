"""Training and evaluation loops. Entry points (train.py, eval.py) parse flags and call these.

Evaluation scores every option of a question by the mean NLL of its scored span (SPEC §4) and
predicts the argmin. With `packed` scoring (default) each question's shared prefix runs once; `full`
runs each option's whole sequence. Each question is scored on exactly one rank; rank 0 gathers.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataloader.base import Batch, ScoringCollate
from llama.adapter import TOPA, project_to_memory
from util import dist


# ---------------------------------------------------------------- shared pieces

def prepare_video(batch: Batch, memory: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Batch video features, projected onto the text memory when given (inference only, SPEC §2.3)."""
    if batch.video is None or memory is None:
        return batch.video
    return project_to_memory(batch.video, memory)


def token_nll(model: TOPA, batch: Batch, video: Optional[torch.Tensor], gate2: bool = True) -> torch.Tensor:
    """NLL of every scored token [N] (fp32). Logits are computed only where a target is scored."""
    h = model.hidden(batch.tokens, batch.positions, batch.mask, video, batch.video_start, gate2=gate2)
    # options of a packed question share their prefix positions: project each position once
    key = batch.t_row * h.shape[1] + batch.t_pos
    uniq, inv = torch.unique(key, return_inverse=True)
    logits = model.logits(h.flatten(0, 1)[uniq])  # [U, vocab] fp32
    lse = torch.logsumexp(logits, dim=-1)         # [U]
    return lse[inv] - logits[inv, batch.t_tgt]


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of `values` per group id -> [n_groups]."""
    total = torch.zeros(n_groups, device=values.device).index_add_(0, groups, values)
    count = torch.zeros(n_groups, device=values.device).index_add_(0, groups, torch.ones_like(values))
    return total / count


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def score_batch(model: TOPA, batch: Batch, memory=None) -> List[List[float]]:
    """Per item of the batch, the list of its options' scores (mean span NLL)."""
    nll = token_nll(model, batch, prepare_video(batch, memory))
    scores = group_mean(nll, batch.t_group, batch.n_groups).tolist()
    out, g = [], 0
    for it in batch.meta:
        k = len(it["seqs"])
        out.append(scores[g:g + k])
        g += k
    return out


def shard_indices(n: int, rank: int, world: int) -> List[int]:
    """Every index on exactly one rank (no padding, no duplicates)."""
    return list(range(rank, n, world))


@torch.no_grad()
def evaluate(model: TOPA, dataset, *, batch_size: int, device, memory=None, scoring: str = "packed",
             max_seq_len: Optional[int] = None, num_workers: int = 0, progress: bool = True,
             desc: str = "eval") -> dict:
    """Score `dataset` (an MCQADataset) on this rank's shard and gather on every rank.

    Returns {"predictions": [...] in dataset order, "n_too_long": int}. Prompts longer than
    `max_seq_len` are scored whole (never cut) and counted."""
    model.eval()
    part = Subset(dataset, shard_indices(len(dataset), dist.rank(), dist.world_size()))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=ScoringCollate(scoring))
    preds, too_long, n_cut = [], 0, 0
    bar = tqdm(loader, desc=desc, disable=not (progress and dist.is_main()), dynamic_ncols=True)
    for batch in bar:
        batch.to(device)
        for it, scores in zip(batch.meta, score_batch(model, batch, memory)):
            r = it["record"]
            longest = max(len(s) for s in it["seqs"])
            too_long += bool(max_seq_len and longest > max_seq_len)
            n_cut += any(s.n_cut for s in it["seqs"])
            pred = min(range(len(scores)), key=scores.__getitem__)
            preds.append({"index": it["index"], "video": r.vid, "qid": r.qid, "type": r.qtype,
                          "answer": r.answer, "prediction": pred, "scores": scores, "length": longest})
    gathered = [p for part_preds in dist.gather_objects(preds) for p in part_preds]
    gathered.sort(key=lambda p: p["index"])
    seen = [p["index"] for p in gathered]
    if seen != list(range(len(dataset))):
        raise RuntimeError(f"evaluation gathered {len(seen)} predictions for {len(dataset)} questions")
    n_too_long = sum(dist.gather_objects(too_long))
    n_cut = sum(dist.gather_objects(n_cut))
    return {"predictions": gathered, "n_too_long": n_too_long, "n_cut": n_cut}


def accuracy(predictions: List[dict], type_groups=None) -> Dict[str, dict]:
    """{bucket: {"correct", "total", "acc"}} over answered questions: "total" plus the buckets that
    `type_groups(qtype)` names (NExT-QA: C/T/D and each raw type)."""
    buckets = defaultdict(lambda: [0, 0])
    for p in predictions:
        if p["answer"] is None:
            continue
        ok = int(p["prediction"] == p["answer"])
        for b in ["total"] + (list(type_groups(p["type"])) if type_groups else []):
            buckets[b][0] += ok
            buckets[b][1] += 1
    return {b: {"correct": c, "total": n, "acc": 100.0 * c / n} for b, (c, n) in sorted(buckets.items())}


def format_table(acc: Dict[str, dict], title: str) -> str:
    lines = [title, f"{'bucket':<10} {'acc %':>7} {'correct':>8} {'total':>6}"]
    order = ["total"] + [b for b in acc if b != "total"]
    lines += [f"{b:<10} {acc[b]['acc']:7.2f} {acc[b]['correct']:8d} {acc[b]['total']:6d}" for b in order if b in acc]
    return "\n".join(lines)


def write_eval_outputs(result: dict, output_dir, dataset_name: str, split: str, type_groups=None,
                       submission: bool = False) -> dict:
    """predictions_<ds>_<split>.jsonl, accuracy_<ds>_<split>.json (and a submission file for test sets).
    Call on rank 0 only. Returns the accuracy dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = result["predictions"]
    with open(out / f"predictions_{dataset_name}_{split}.jsonl", "w") as f:
        for p in preds:
            f.write(json.dumps({k: v for k, v in p.items() if k != "index"}) + "\n")
    acc = accuracy(preds, type_groups)
    with open(out / f"accuracy_{dataset_name}_{split}.json", "w") as f:
        json.dump({"accuracy": acc, "n_questions": len(preds), "n_longer_than_max_seq_len": result["n_too_long"],
                   "n_dialogue_cut": result.get("n_cut", 0)},
                  f, indent=2)
    if submission:
        with open(out / f"submission_{dataset_name}_{split}.json", "w") as f:
            json.dump({p["qid"]: p["prediction"] for p in preds}, f)
    return acc


# ================================================================ training
# Everything below is the training side (train.py). It reuses `token_nll` from above; evaluation during
# training calls `evaluate` / `write_eval_outputs` unchanged.

import math  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402

from torch import nn  # noqa: E402

from dataloader.training import TrainBatch  # noqa: E402
from util.schedule import lr_at, set_lr  # noqa: E402


def qav_loss(model: TOPA, batch: Batch, tau: float) -> torch.Tensor:
    """SPEC §4 qav: the hidden state at slot position s+t-1 scores frame t against visual_proj(v) of all
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
    """Token cross-entropy over the scored spans, mean over the batch's span tokens (SPEC §4)."""
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
    """SPEC §5: vqa + weight_captioning * vaq + qav. A caption batch's loss (summary / open QA) is weighted
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


def train_one_epoch(step: nn.Module, model: TOPA, loader, optimizer: torch.optim.Optimizer, epoch: int, args,
                    device, scaler: Optional["torch.amp.GradScaler"] = None, logger=None) -> dict:
    """One epoch of `loader` (TrainBatches). `step` is the TrainStep, DDP-wrapped under torchrun.

    Per iteration: the lr is set at each accumulation boundary from e = it/len(loader) + epoch (SPEC §5);
    loss / accum_iter is backpropagated (DDP gradients are synchronised only on the step that ends an
    accumulation cycle); the optimizer steps every accum_iter iterations. The last, possibly shorter,
    cycle of the epoch also steps, its gradient rescaled to the mean over the iterations it holds.
    Returns the epoch's mean losses (averaged over ranks) and counts."""
    step.train()
    accum = max(1, int(args.accum_iter))
    n_iter = len(loader)
    trainable = [p for _, p in model.trainable_parameters()]
    optimizer.zero_grad(set_to_none=True)
    sums = {k: 0.0 for k in ("loss",) + LOSS_PARTS}
    counts = {k: 0 for k in sums}
    n_items = n_too_long = longest_seen = n_tokens = n_nonfinite = n_cut = 0
    lr = optimizer.param_groups[-1]["lr"]
    t0 = time.time()
    bar = tqdm(loader, total=n_iter, desc=f"epoch {epoch}", disable=not dist.is_main(), dynamic_ncols=True)
    for it, tb in enumerate(bar):
        if it % accum == 0:
            lr = lr_at(it / n_iter + epoch, args.lr, args.min_lr, args.warmup_epochs, args.epochs)
            set_lr(optimizer, lr)
        boundary = (it + 1) % accum == 0 or it + 1 == n_iter
        sync = step.no_sync() if isinstance(step, nn.parallel.DistributedDataParallel) and not boundary \
            else nullcontext()
        tb.to(device)
        with sync:
            losses = step(tb)
            loss = total_loss(losses, args.weight_captioning)
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
                if args.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                if args.clip_grad:
                    torch.nn.utils.clip_grad_norm_(trainable, args.clip_grad)
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
                tqdm.write(f"note: training item {idx} has {n} tokens > max_seq_len={args.max_seq_len}; such "
                           "items are kept whole (never cut) and counted (reported at the end of the epoch)")
            n_too_long += len(tb.too_long)
            longest_seen = max(longest_seen, max(n for _, n in tb.too_long))
        shown = {k: f"{v.item():.4f}" for k, v in losses.items()}
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3e}", **shown)
        log_every = getattr(args, "log_every", 0)
        if logger is not None and log_every and (it + 1) % log_every == 0:
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
                  f"{args.max_seq_len} (--truncate_dialogue)", flush=True)
        if n_too_long:
            print(f"epoch {epoch}: {n_too_long} of {n_items} training items were longer than max_seq_len="
                  f"{args.max_seq_len} (longest {longest_seen} tokens); they were kept whole, not cut "
                  "(batches are padded to their longest item)", flush=True)
    return stats
