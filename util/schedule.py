"""Learning rate: linear warmup, then a half-cycle cosine from `lr` to `min_lr` at `epochs`,
evaluated at a fractional epoch `e = it / len(loader) + epoch`, and the optimizer parameter groups."""
import math
from typing import Iterable, List, Tuple

import torch


def absolute_lr(blr: float, batch_size: int, accum_iter: int, world_size: int) -> float:
    """`lr = blr * effective batch / 256` (used unless --lr is given)."""
    return blr * batch_size * accum_iter * world_size / 256


def lr_at(e: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional epoch `e`."""
    if e < warmup_epochs:
        return lr * e / warmup_epochs
    span = epochs - warmup_epochs
    progress = (e - warmup_epochs) / span if span > 0 else 1.0
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr


def param_groups(named_params: Iterable[Tuple[str, torch.nn.Parameter]], weight_decay: float) -> List[dict]:
    """Two groups: weight decay on params with ndim >= 2 (matrices, embeddings, the [1,H,1,1] gates),
    none on ndim <= 1. Both groups are always present (same layout as the original optimizer state)."""
    decay, no_decay = [], []
    for _, p in named_params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
