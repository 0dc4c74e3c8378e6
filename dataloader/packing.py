"""Packed scoring: how task sequences become model rows and padded batches.

A `Row` is what the model runs: token ids (`VIDEO` at the T video positions), explicit positions and
segment ids (0 = shared; k > 0 = a tail that sees segment 0 and itself only). Two ways to make rows:

- `single_row(seq)`: one whole sequence (training; `--scoring full`).
- `pack_options(seqs)`: the options of one question, `prefix | tail_1 | tail_2 | ...`. The shared
  prefix runs once; tail k continues the prefix's positions and sees only the prefix and itself, so
  each option's logits equal those of its own full sequence.

`collate_rows` pads rows to the batch's longest and returns a `Batch` that carries everything the
engine needs as tensors: the attention mask, the scored tokens (which flat position predicts each,
deduplicated because options share their prefix positions), the scored sequence ("group") of each
token and the batch item of each group. The engine reads nothing else.
"""
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence as Seq, Tuple

import torch

from text.prompts import VIDEO, PromptError, Sequence


@dataclass
class Row:
    """One model row. `targets`: per scored sequence, (predicting positions in the row, target ids)."""
    tokens: List[int]
    positions: List[int]
    segments: List[int]
    video_start: Optional[int]
    targets: List[Tuple[List[int], List[int]]] = field(default_factory=list)

    def __len__(self):
        return len(self.tokens)


def single_row(seq: Sequence, scored: bool = True) -> Row:
    """A whole sequence as one row; its one target list covers tokens[span_start:] (none if not
    `scored`, e.g. qav, whose loss scores the video slot instead of tokens)."""
    n = len(seq.tokens)
    row = Row(list(seq.tokens), list(range(n)), [0] * n, seq.video_start)
    if scored:
        row.targets.append((list(range(seq.span_start - 1, n - 1)), list(seq.tokens[seq.span_start:])))
    return row


def pack_options(seqs: Seq[Sequence]) -> Row:
    """`prefix | tail_1 | tail_2 | ...` for sequences that share a prefix up to their scored spans."""
    first = seqs[0].tokens
    P = min(len(s) for s in seqs)
    for s in seqs[1:]:
        P = next((i for i in range(P) if s.tokens[i] != first[i]), P)
    if any(s.span_start > P for s in seqs) or P == 0:
        raise PromptError("options do not share the prefix up to their scored span")
    if any(len(s) == P for s in seqs):  # every option needs a tail to hold its own last tokens
        P -= 1
    tokens, positions, segments = list(first[:P]), list(range(P)), [0] * P
    row = Row(tokens, positions, segments, seqs[0].video_start)
    for k, s in enumerate(seqs, 1):
        off = len(tokens)
        tail = s.tokens[P:]
        tokens += tail
        positions += range(P, P + len(tail))
        segments += [k] * len(tail)
        # target index j of the full sequence is predicted from full position j-1, which is in the
        # prefix (j-1 < P) or at packed index off + (j-1-P) in this tail
        pred = [j - 1 if j - 1 < P else off + j - 1 - P for j in range(s.span_start, len(s))]
        row.targets.append((pred, list(s.tokens[s.span_start:])))
    return row


@dataclass
class Batch:
    tokens: torch.Tensor                 # [B, L] (VIDEO and padding replaced by 0)
    positions: torch.Tensor              # [B, L]
    mask: Optional[torch.Tensor]         # [B, 1, L, L] bool, True = may attend; None = plain causal
    video: Optional[torch.Tensor]        # [B, T, d] or None
    video_start: Optional[torch.Tensor]  # [B]
    t_pred: torch.Tensor                 # [U] distinct predicting positions, flat index b * L + i
    t_inv: torch.Tensor                  # [N] index into t_pred of the position predicting scored token n
    t_tgt: torch.Tensor                  # [N] target id of scored token n
    t_group: torch.Tensor                # [N] scored sequence (group) of token n
    g_item: torch.Tensor                 # [G] batch item of each group (groups of an item are consecutive)
    items: list = field(default_factory=list)  # the dataset items, in batch order

    @property
    def n_groups(self) -> int:
        return int(self.g_item.shape[0])

    def to(self, device):
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device, non_blocking=True))
        return self

    def pin_memory(self) -> "Batch":
        """A copy whose tensors are in page-locked host memory (DataLoader(pin_memory=True) calls this;
        it pins only tensors and plain containers by itself)."""
        return replace(self, **{k: v.pin_memory() for k, v in vars(self).items() if isinstance(v, torch.Tensor)})


def collate_rows(rows: List[Row], videos: Optional[List[torch.Tensor]], row_item: Optional[List[int]] = None,
                 items: Optional[list] = None) -> Batch:
    """Pad to the longest row. Attention: causal in row order; a token in segment k > 0 sees segment 0
    and segment k only; padding sees only itself and is never seen. When every row is one whole
    sequence (training, `--scoring full`) the mask is None, plain causal, which the fused kernels run
    without a mask tensor (flash): real tokens never see the padding after them, and what padding
    sees is never scored. `row_item[b]`: the batch item of row b (default: row b is item b)."""
    B, L = len(rows), max(len(r) for r in rows)
    row_item = list(range(B)) if row_item is None else row_item
    tokens = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, L, dtype=torch.long)
    segments = torch.full((B, L), -1, dtype=torch.long)
    flat, tgt, group, g_item = [], [], [], []
    for b, r in enumerate(rows):
        n = len(r)
        tokens[b, :n] = torch.tensor([0 if t == VIDEO else t for t in r.tokens])
        positions[b, :n] = torch.tensor(r.positions)
        positions[b, n:] = torch.arange(r.positions[-1] + 1, r.positions[-1] + 1 + L - n)
        segments[b, :n] = torch.tensor(r.segments)
        for pred, ids in r.targets:
            flat += [b * L + i for i in pred]
            tgt += ids
            group += [len(g_item)] * len(pred)
            g_item.append(row_item[b])
    mask = None
    if any(k > 0 for r in rows for k in r.segments):
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        sq, sk = segments[:, :, None], segments[:, None, :]   # [B, L, 1], [B, 1, L]
        mask = causal & (sk >= 0) & ((sk == 0) | (sk == sq))   # [B, L, L]
        mask |= torch.eye(L, dtype=torch.bool)                 # padding rows see themselves
        mask = mask[:, None]                                   # [B, 1, L, L]
    has_video = [r.video_start is not None for r in rows]
    video = video_start = None
    if videos is not None and any(has_video):
        if not all(has_video):
            raise ValueError("a batch mixes rows with and without a video slot")
        video = torch.stack(videos)
        video_start = torch.tensor([r.video_start for r in rows])
    # options of a packed question share their prefix positions: each position is projected once
    t_pred, t_inv = torch.unique(torch.tensor(flat, dtype=torch.long), return_inverse=True)
    return Batch(tokens, positions, mask, video, video_start, t_pred, t_inv,
                 torch.tensor(tgt, dtype=torch.long), torch.tensor(group, dtype=torch.long),
                 torch.tensor(g_item, dtype=torch.long), items or [])


class ScoringCollate:
    """Evaluation collate for multiple-choice items (`EvalItem`): `packed` runs each question's shared
    prefix once (one row per question); `full` runs every option as its own row. Same scores either way."""

    def __init__(self, scoring: str = "packed"):
        if scoring not in ("packed", "full"):
            raise ValueError(f"scoring must be 'packed' or 'full', not {scoring!r}")
        self.scoring = scoring

    def __call__(self, items) -> Batch:
        rows, videos, row_item = [], [], []
        for i, it in enumerate(items):
            group = [pack_options(it.seqs)] if self.scoring == "packed" else [single_row(s) for s in it.seqs]
            rows += group
            videos += [it.video] * len(group)
            row_item += [i] * len(group)
        return collate_rows(rows, videos, row_item, items)
