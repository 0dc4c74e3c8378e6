"""Shared data plumbing: feature fitting (SPEC §2), the question record every benchmark reader yields,
one multiple-choice dataset for all benchmarks, and the collate that pads rows to the batch's longest.

Benchmark modules (nextqa.py, egoschema.py, ...) only read their layout into `QARecord`s and say where
each video's features come from; everything after that is here, once.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence as Seq

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from llama.prompts import VIDEO, PromptBuilder, Row, pack_options, single_row


class DataError(ValueError):
    """Bad input data; the message names the file, row and id."""


# ---- features (SPEC §2) ----

def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def fit_frames(feats: torch.Tensor, T: int) -> torch.Tensor:
    """[n, d] frame features -> [T, d]: rows floor(j*n/T) when n > T, zero rows appended when n < T.
    Rows are L2-normalised first (zero rows stay zero)."""
    feats = normalize(feats)
    n = feats.shape[0]
    if n > T:
        return feats[[math.floor(j * n / T) for j in range(T)]]
    if n < T:
        return torch.cat([feats, feats.new_zeros(T - n, feats.shape[1])])
    return feats


def fuse_text_frames(rows: torch.Tensor, counts: Seq[int], variance: float = 0.0,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """TextVid: `rows` [sum(counts), d] CLIP text features in frame order -> [n_frames, d]: each
    frame's rows normalised, averaged, normalised; optional Gaussian noise, then renormalised."""
    rows = normalize(rows)
    frames = torch.stack([normalize(c.mean(0)) for c in torch.split(rows, list(counts))])
    if variance > 0:
        noise = torch.randn(frames.shape, generator=generator) * math.sqrt(variance)
        frames = normalize(frames + noise)
    return frames


# ---- records and the multiple-choice dataset ----

@dataclass
class QARecord:
    vid: str                     # key of the video's features
    qid: str                     # unique question id (NExT-QA: f"{video}_{qid}")
    question: str
    options: List[str]
    answer: Optional[int]        # None where answers are not public (test sets)
    qtype: str = ""
    clip: Optional[tuple] = None  # (first_row, last_row) inclusive, or None for the whole video
    dialogue: Optional[str] = None
    source: str = ""             # "file:row" for error messages


@dataclass
class PromptStyle:
    star: bool = False           # "Answer: The answer is "
    enders: str = "?"            # question endings that need no "?" (EgoSchema: "?.")


FeatureSource = Callable[[str], torch.Tensor]  # vid -> [n, 768]


class MCQADataset(Dataset):
    """Multiple-choice items of any benchmark: fitted features + the option sequences to score
    (eval) or the answer's sequence (training)."""

    def __init__(self, records: List[QARecord], features: FeatureSource, builder: PromptBuilder,
                 max_feats: int, style: PromptStyle = PromptStyle(), train: bool = False):
        self.records, self.features, self.builder = records, features, builder
        self.T, self.style, self.train = max_feats, style, train

    def __len__(self):
        return len(self.records)

    def video(self, r: QARecord) -> torch.Tensor:
        feats = self.features(r.vid)
        if r.clip is not None:
            a, b = r.clip
            clip = feats[a:b + 1]
            if clip.shape[0] == 0:
                raise DataError(f"{r.source}: question {r.qid}: clip rows {a}..{b} are outside video "
                                f"'{r.vid}' ({feats.shape[0]} feature rows)")
            feats = clip
        return fit_frames(feats, self.T)

    def __getitem__(self, i):
        r = self.records[i]
        kw = dict(star=self.style.star, enders=self.style.enders)
        if r.dialogue is not None:
            kw["dialogue"] = r.dialogue
        if self.train:
            seqs = [self.builder.mcqa(r.question, r.options, r.answer, **kw)]
        else:
            seqs = self.builder.mcqa_options(r.question, r.options, **kw)
        return {"index": i, "record": r, "video": self.video(r), "seqs": seqs}


# ---- collate: rows -> padded tensors ----

@dataclass
class Batch:
    tokens: torch.Tensor       # [B, L] (VIDEO and padding replaced by 0)
    positions: torch.Tensor    # [B, L]
    mask: torch.Tensor         # [B, 1, L, L] bool, True = may attend
    video: Optional[torch.Tensor]        # [B, T, d] or None
    video_start: Optional[torch.Tensor]  # [B]
    t_row: torch.Tensor        # [N] row of each scored token
    t_pos: torch.Tensor        # [N] position in the row whose logits predict it
    t_tgt: torch.Tensor        # [N] target id
    t_group: torch.Tensor      # [N] which scored sequence it belongs to
    n_groups: int
    meta: list = field(default_factory=list)

    def to(self, device):
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device, non_blocking=True))
        return self

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())


def collate_rows(rows: List[Row], videos: Optional[List[torch.Tensor]], meta=None) -> Batch:
    """Pad to the longest row. Attention: causal in row order, a token in segment k>0 sees segment 0
    and segment k only; padding sees only itself and is never seen."""
    B, L = len(rows), max(len(r) for r in rows)
    tokens = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, L, dtype=torch.long)
    segments = torch.full((B, L), -1, dtype=torch.long)
    t_row, t_pos, t_tgt, t_group = [], [], [], []
    g = 0
    for b, r in enumerate(rows):
        n = len(r)
        tokens[b, :n] = torch.tensor([0 if t == VIDEO else t for t in r.tokens])
        positions[b, :n] = torch.tensor(r.positions)
        positions[b, n:] = torch.arange(r.positions[-1] + 1, r.positions[-1] + 1 + L - n)
        segments[b, :n] = torch.tensor(r.segments)
        for pred, tgt in r.targets:
            t_row += [b] * len(pred)
            t_pos += pred
            t_tgt += tgt
            t_group += [g] * len(pred)
            g += 1
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    sq, sk = segments[:, :, None], segments[:, None, :]   # [B, L, 1], [B, 1, L]
    mask = causal & (sk >= 0) & ((sk == 0) | (sk == sq))   # [B, L, L]
    mask |= torch.eye(L, dtype=torch.bool)                 # padding rows see themselves
    has_video = [r.video_start is not None for r in rows]
    video = video_start = None
    if videos is not None and any(has_video):
        if not all(has_video):
            raise ValueError("a batch mixes rows with and without a video slot")
        video = torch.stack(videos)
        video_start = torch.tensor([r.video_start for r in rows])
    return Batch(tokens, positions, mask[:, None], video, video_start,
                 torch.tensor(t_row, dtype=torch.long), torch.tensor(t_pos, dtype=torch.long),
                 torch.tensor(t_tgt, dtype=torch.long), torch.tensor(t_group, dtype=torch.long), g,
                 meta or [])


class ScoringCollate:
    """Eval collate for MCQADataset items: `packed` runs each question's shared prefix once
    (one row per question); `full` runs every option as its own row. Same scores either way."""

    def __init__(self, scoring: str = "packed"):
        if scoring not in ("packed", "full"):
            raise ValueError(f"scoring must be 'packed' or 'full', not {scoring!r}")
        self.scoring = scoring

    def __call__(self, items) -> Batch:
        rows, videos = [], []
        for it in items:
            if self.scoring == "packed":
                rows.append(pack_options(it["seqs"]))
                videos.append(it["video"])
            else:
                for s in it["seqs"]:
                    rows.append(single_row(s))
                    videos.append(it["video"])
        return collate_rows(rows, videos, meta=items)


def train_collate(items) -> Batch:
    """Training collate: one row per item (its single sequence), loss over every span token."""
    return collate_rows([single_row(it["seqs"][0]) for it in items], [it["video"] for it in items],
                        meta=[it.get("record") for it in items])
