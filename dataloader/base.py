"""Shared data plumbing: feature fitting (SPEC §2), the question record every benchmark reader yields,
one multiple-choice dataset for all benchmarks, and the collate that pads rows to the batch's longest.

Benchmark modules (nextqa.py, egoschema.py, ...) only read their layout into `QARecord`s and say where
each video's features come from; everything after that is here, once.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence as Seq

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from llama.prompts import DEFAULT, VIDEO, PromptBuilder, PromptStyle, Row, pack_options, single_row


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


FeatureSource = Callable[[str], torch.Tensor]  # vid -> [n, 768]


class MCQADataset(Dataset):
    """Multiple-choice items of any benchmark: fitted features + the option sequences to score
    (eval) or the answer's sequence (training)."""

    def __init__(self, records: List[QARecord], features: FeatureSource, builder: PromptBuilder,
                 max_feats: int, style: PromptStyle = DEFAULT, train: bool = False,
                 dialogue_max_len: Optional[int] = None):
        self.records, self.features, self.builder = records, features, builder
        self.T, self.style, self.train = max_feats, style, train
        self.dialogue_max_len = dialogue_max_len  # TVQA: cut dialogue tokens to fit (opt-in)

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
        kw = dict(style=self.style, dialogue=r.dialogue, max_len=self.dialogue_max_len)
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


# ---- helpers for the benchmark readers (nextqa.py, star.py, tvqa.py, egoschema.py) ----

FEATURE_DIM = 768  # CLIP ViT-L/14


def check_feature_shape(shape, vid: str, where: str) -> int:
    """-> number of rows of a [n, 768] feature tensor; DataError naming the vid and file otherwise."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[1] != FEATURE_DIM:
        raise DataError(f"{where}: features of video '{vid}' have shape {list(shape)}, "
                        f"expected [n, {FEATURE_DIM}]")
    return int(shape[0])


class DictFeatures:
    """Feature source over one file holding a dict vid -> [n, 768] tensor (NExT-QA, STAR, TVQA).
    Keys are compared as strings."""

    def __init__(self, path):
        from llama.checkpoint import safe_load
        self.path = str(path)
        obj = safe_load(self.path)
        if not isinstance(obj, dict):
            raise DataError(f"{self.path}: expected a dict video id -> [n, {FEATURE_DIM}] tensor, "
                            f"got {type(obj).__name__}")
        self.feats = {str(k): v for k, v in obj.items()}

    def __contains__(self, vid) -> bool:
        return vid in self.feats

    def n_rows(self, vid: str) -> int:
        t = self.feats[vid]
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{self.path}: features of video '{vid}' are a {type(t).__name__}, not a tensor")
        return check_feature_shape(t.shape, vid, self.path)

    def __call__(self, vid: str) -> torch.Tensor:
        if vid not in self.feats:
            raise DataError(f"{self.path}: no features for video '{vid}'")
        self.n_rows(vid)
        return self.feats[vid]


class NpyDirFeatures:
    """Feature source over a folder of `<vid>.npy` arrays [n, 768] (EgoSchema); loaded on demand."""

    def __init__(self, folder):
        self.folder = str(folder)

    def path(self, vid: str) -> str:
        return os.path.join(self.folder, f"{vid}.npy")

    def __contains__(self, vid) -> bool:
        return os.path.isfile(self.path(vid))

    def n_rows(self, vid: str) -> int:
        """Reads the .npy header only (memory-mapped, no data read)."""
        p = self.path(vid)
        try:
            shape = np.load(p, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable .npy file for video '{vid}': {e}") from None
        return check_feature_shape(shape, vid, p)

    def __call__(self, vid: str) -> torch.Tensor:
        p = self.path(vid)
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: cannot load features of video '{vid}': {e}") from None
        check_feature_shape(arr.shape, vid, p)
        return torch.from_numpy(np.ascontiguousarray(arr))


def require(row: dict, key: str, where: str, rid) -> object:
    """row[key], or a DataError naming the file:row, the question id and the missing key."""
    v = row.get(key) if isinstance(row, dict) else None
    if v is None:
        raise DataError(f"{where}: question {rid}: missing '{key}'")
    return v


def parse_answer(value, n_options: int, where: str, rid, allow_none: bool) -> Optional[int]:
    """An answer index 0..n_options-1; None/'' -> None where answers may be absent (test splits)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if allow_none:
            return None
        raise DataError(f"{where}: question {rid}: missing answer")
    try:
        if isinstance(value, bool):
            raise ValueError
        a = int(value) if not isinstance(value, float) else (int(value) if value.is_integer() else None)
        if a is None:
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"{where}: question {rid}: answer {value!r} is not an option index") from None
    if not 0 <= a < n_options:
        raise DataError(f"{where}: question {rid}: answer {a} is not in 0..{n_options - 1}")
    return a


def _id_list(ids, k: int = 5) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:k])) + (f", ... ({len(ids)} in all)" if len(ids) > k else f" ({len(ids)})")


def make_mcqa_dataset(records: List[QARecord], features, builder: PromptBuilder, max_feats: int,
                      style: PromptStyle, train: bool = False, skip_missing: bool = False,
                      what: str = "", feature_where: str = "") -> MCQADataset:
    """Checks every record against its feature source before anything runs: ids unique, the video
    has features of width 768, its clip overlaps the feature rows, and (training) an answer exists.
    Questions without usable features are a DataError naming them, or with `skip_missing` dropped
    with a one-line warning; the dataset's `n_skipped` / `skipped` attributes say which."""
    seen, dups = set(), []
    for r in records:
        if r.qid in seen:
            dups.append(r.qid)
        seen.add(r.qid)
    if dups:
        raise DataError(f"{what}: duplicate question ids: {_id_list(dups)}")
    if train:
        no_ans = [r for r in records if r.answer is None]
        if no_ans:
            raise DataError(f"{what}: training needs answers; {no_ans[0].source}: question "
                            f"{no_ans[0].qid} has none ({len(no_ans)} questions in all)")
    rows: Dict[str, int] = {}
    kept, missing, outside = [], [], []
    for r in records:
        if r.vid not in rows:
            rows[r.vid] = features.n_rows(r.vid) if r.vid in features else -1
        n = rows[r.vid]
        if n < 0:
            missing.append(r)
        elif n == 0 or (r.clip is not None and r.clip[0] >= n):
            outside.append(r)
        else:
            kept.append(r)
    bad = missing + outside
    if bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} have no features in {feature_where} "
                         f"(question/video: {_id_list(f'{r.qid}/{r.vid}' for r in missing)})")
        if outside:
            parts.append(f"{len(outside)} have no feature rows in their clip "
                         f"(question: {_id_list(f'{r.qid} rows {r.clip} of {rows[r.vid]}' for r in outside)})")
        msg = f"{what}: of {len(records)} questions, " + "; ".join(parts)
        if not skip_missing:
            raise DataError(msg + " (skip_missing=True drops them)")
        print(f"warning: {msg}; skipped {len(bad)} questions", flush=True)
    ds = MCQADataset(kept, features, builder, max_feats, style=style, train=train)
    ds.n_skipped = len(bad)
    ds.skipped = [r.qid for r in bad]
    return ds


def read_csv_rows(path, required: Seq[str], id_key: str):
    """Yields (source "file:line", row dict) of a csv file; DataError for a missing column (naming the
    file and header line) or a short/long row (naming file:line and the row's id)."""
    import csv
    path = str(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        absent = [k for k in required if k not in header]
        if absent:
            raise DataError(f"{path}:1: missing column(s) {', '.join(absent)} (header: {', '.join(header)})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataError(f"{where}: question {row.get(id_key)}: more fields than the header has")
            short = [k for k in required if row.get(k) is None]
            if short:
                raise DataError(f"{where}: question {row.get(id_key)}: missing '{short[0]}' (row too short)")
            yield where, row
