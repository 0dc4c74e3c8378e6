"""The text-feature memory (docs/model.md): `memory.pkl` holds CLIP *text* features; at test time video
features are projected onto it, so that CLIP *image* features land where the model was aligned (TextVid's
text features). One home for the memory: reading the file (`load_memory`) and the projection
(`project_to_memory`, `project`). Whether a run uses it is decided by one rule, `engine.config.memory_on`
(a request's choice, the run's flags, else the benchmark's protocol); where the file is by default,
`dataloader.benchmarks.memory_file`.
"""
import math
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F

from dataloader.base import FEATURE_DIM
from util.errors import DataError, MissingFileError
from util.files import load_pickled_tensor, nonfinite


def load_memory(path, max_rows: int = 1_000_000, dim: int = FEATURE_DIM) -> torch.Tensor:
    """memory.pkl: [N, dim] unit-norm text features -> the first `max_rows` rows, stored in fp16
    (1M rows: 1.5 GB instead of 3.1 GB in fp32). `project_to_memory` does its math in fp32, chunk by
    chunk; rounding unit-norm rows to fp16 moves each element by at most 2^-11 of its value (below
    2^-14 in magnitude, fp16's normal range: by at most 2^-25). A NaN or Inf in those rows is an error
    naming the row."""
    if not os.path.isfile(path):
        raise MissingFileError(f"memory file not found: {path} (--memory_path)")
    mem = load_pickled_tensor(path)
    if mem.ndim != 2 or mem.shape[1] != dim or mem.shape[0] == 0:
        raise DataError(f"{path}: memory must be [N, {dim}] CLIP features (N >= 1), got {list(mem.shape)}")
    if not mem.is_floating_point():
        raise DataError(f"{path}: memory must hold float features, got {mem.dtype}")
    out = mem[:max_rows].to(torch.float16)
    bad = nonfinite(out)
    if bad is not None:
        raise DataError(f"{path}: memory row {bad[0][0]} holds a non-finite value ({bad[1]})")
    if out.untyped_storage().nbytes() > out.nbytes:  # an fp16 view of a longer file: keep only its rows
        out = out.clone()
    check_memory_rows(out, path)
    return out


def check_memory_rows(mem: torch.Tensor, path, chunk: int = 65536):
    """A memory the projection can use: no zero row and not every row alike (either makes every score
    ignore the video: an error naming the row); rows of unit norm, as CLIP text features are stored and
    the projection's temperature (100) assumes (otherwise a warning with the norms found)."""
    lo, hi, first = math.inf, 0.0, mem[0].float()
    alike = mem.shape[0] > 1
    for start in range(0, mem.shape[0], chunk):
        m = mem[start:start + chunk].float()
        norms = m.norm(dim=-1)
        zero = (norms == 0).nonzero()
        if len(zero):
            raise DataError(f"{path}: memory row {start + int(zero[0])} is all zeros (a memory holds CLIP text "
                            "features, one sentence a row)")
        lo, hi = min(lo, norms.min().item()), max(hi, norms.max().item())
        alike = alike and bool((m == first).all())
    if alike:
        raise DataError(f"{path}: all {mem.shape[0]} memory rows are the same vector, so the projection gives "
                        "every frame that vector (a memory holds CLIP text features of different sentences)")
    if lo < 0.99 or hi > 1.01:  # fp16 rounding of unit-norm rows stays within 1e-3
        print(f"warning: {path}: memory rows are not unit-norm (norms {lo:.3g} .. {hi:.3g}); the published "
              "memory holds unit-norm CLIP text features and the projection's temperature assumes them",
              file=sys.stderr)


def project_to_memory(v: torch.Tensor, memory: torch.Tensor, temperature: float = 100.0,
                      chunk: int = 65536) -> torch.Tensor:
    """The memory projection: v <- normalize(softmax(100 v M^T) M), row-wise, in fp32 whatever the
    memory's storage dtype (fp16 from `load_memory`): each chunk of M rows is upcast on its own, with an
    online softmax over the chunks, so a 1M-row memory never needs a [rows, 1M] matrix or an fp32 copy
    of itself (one chunk: 65536 x 768 fp32 = 200 MB)."""
    shape = v.shape
    v = v.reshape(-1, shape[-1]).float()
    m = torch.full((v.shape[0], 1), float("-inf"), device=v.device)
    denom = torch.zeros(v.shape[0], 1, device=v.device)
    acc = torch.zeros_like(v)
    for start in range(0, memory.shape[0], chunk):
        M = memory[start:start + chunk].to(v.device, torch.float32)
        logit = temperature * (v @ M.T)                     # [rows, chunk]
        m_new = torch.maximum(m, logit.max(-1, keepdim=True).values)
        scale = torch.exp(m - m_new)
        p = torch.exp(logit - m_new)
        denom = denom * scale + p.sum(-1, keepdim=True)
        acc = acc * scale + p @ M
        m = m_new
    return F.normalize(acc / denom, dim=-1).reshape(shape)


def project(video: Optional[torch.Tensor], memory: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`video` projected onto `memory` when both are given, else `video` unchanged (no memory: off)."""
    if video is None or memory is None:
        return video
    return project_to_memory(video, memory)
