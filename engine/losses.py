"""The losses, one home for training and scoring. Every quantity is the NLL of scored tokens read off one
forward of a packed batch (dataloader/packing.py):

    token_nll    NLL of every scored token [N] (fp32), logits once per distinct predicting position
                 (token_logits, then nll_of: the inference core, engine/infer.py, reads both)
    group_mean   mean per group (an option's span: its score; a training item's span)
    span_loss    training's token cross-entropy over the scored spans (vqa, vaq, caption)
    qav_loss     the video-from-question-and-answer frame loss
    TrainStep    every loss of a TrainBatch in one forward; total_loss weighs them
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dataloader.packing import Batch
from dataloader.train_batches import TrainBatch
from llama.adapter import TOPA


def token_logits(model: TOPA, batch: Batch, video: Optional[torch.Tensor], gate2: bool = True) -> torch.Tensor:
    """Logits [U, vocab] (fp32) at the batch's distinct predicting positions (`batch.t_pred`)."""
    h = model.hidden(batch.tokens, batch.positions, batch.mask, video, batch.video_start, gate2=gate2)
    return model.logits(h.flatten(0, 1)[batch.t_pred])


def nll_of(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """NLL of every scored token [N] from `token_logits`."""
    lse = torch.logsumexp(logits, dim=-1)                   # [U]
    return lse[batch.t_inv] - logits[batch.t_inv, batch.t_tgt]


def token_nll(model: TOPA, batch: Batch, video: Optional[torch.Tensor], gate2: bool = True) -> torch.Tensor:
    """NLL of every scored token [N] (fp32). Logits are computed once per distinct predicting position."""
    return nll_of(token_logits(model, batch, video, gate2), batch)


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of `values` per group id -> [n_groups]."""
    total = torch.zeros(n_groups, device=values.device).index_add_(0, groups, values)
    count = torch.zeros(n_groups, device=values.device).index_add_(0, groups, torch.ones_like(values))
    return total / count


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
    "qav": frame loss}."""

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
