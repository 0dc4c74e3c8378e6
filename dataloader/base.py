"""What every benchmark reader shares: feature fitting, feature sources, the question record and the
typed items that datasets yield, and the small readers of csv/json rows that name the file and row in
their errors.

Benchmark modules (nextqa.py, star.py, ...) only read their layout into `QARecord`s; `dataloader/mcqa.py`
turns records into items, `dataloader/packing.py` items into batches. torch and numpy are imported
where they are used: the benchmark table (and so every `--help`) reads this module without them.
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence as Seq

from text.prompts import Sequence
from util.errors import DataError, MissingFileError

if TYPE_CHECKING:
    import torch

__all__ = ["DataError", "QARecord", "EvalItem", "TrainItem", "fit_frames", "fuse_text_frames", "normalize",
           "DictFeatures", "NpyDirFeatures", "FEATURE_DIM", "read_csv_rows", "read_text", "load_json", "json_objects",
           "jsonl_objects", "require", "parse_answer", "check_finite_rows"]


# ---- features (docs/formats.md: video features -> LLM input) ----

def normalize(x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F
    return F.normalize(x.float(), dim=-1)


def fit_frames(feats: torch.Tensor, T: int) -> torch.Tensor:
    """[n, d] frame features -> [T, d]: rows floor(j*n/T) when n > T, zero rows appended when n < T.
    Rows are L2-normalised first (zero rows stay zero)."""
    import torch
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
    import torch
    rows = normalize(rows)
    frames = torch.stack([normalize(c.mean(0)) for c in torch.split(rows, list(counts))])
    if variance > 0:
        noise = torch.randn(frames.shape, generator=generator) * math.sqrt(variance)
        frames = normalize(frames + noise)
    return frames


# ---- records and items ----

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
class EvalItem:
    """A multiple-choice question to score: its fitted video [T, 768] and one sequence per option."""
    index: int
    record: QARecord
    video: torch.Tensor
    seqs: List[Sequence]


@dataclass
class TrainItem:
    """A training item: fitted video [T, 768], batch kind ("vqa" or "caption") and its sequences by task
    ("vqa" | "caption", plus "vaq" / "qav" when those losses are on)."""
    index: int
    id: str
    video: torch.Tensor
    kind: str
    seqs: Dict[str, Sequence]


# ---- feature sources ----
# A feature source maps a video id to its [n, 768] frame features: `vid in src`, `src.n_rows(vid)` (checks
# the shape without reading the rows where it can), `src(vid)`, and `src.where` (the file or folder).

FEATURE_DIM = 768  # CLIP ViT-L/14 features, the width of every feature file (video/clip.py reads it here)


def check_feature_shape(shape, vid: str, where: str, dtype) -> int:
    """-> number of rows of a [n, 768] floating-point feature tensor (or array); DataError naming the vid
    and file otherwise."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[1] != FEATURE_DIM:
        raise DataError(f"{where}: features of video '{vid}' have shape {list(shape)}, "
                        f"expected [n, {FEATURE_DIM}]")
    check_float(dtype, f"video '{vid}'", where)
    return int(shape[0])


def check_float(dtype, what: str, where: str):
    """Features are floating point: a bool, integer or string tensor (array) is a DataError naming the
    file, never used as numbers."""
    import numpy as np
    import torch
    ok = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.floating)
    if not ok:
        raise DataError(f"{where}: features of {what} are {dtype}, not floating-point numbers (CLIP features "
                        "are fp16 or fp32)")


def check_finite_rows(feats: torch.Tensor, what: str, where: str):
    """A NaN or Inf in frame features is a DataError naming the file, the video (`what`) and the row."""
    from util.files import nonfinite
    bad = nonfinite(feats)
    if bad is not None:
        raise DataError(f"{where}: features of {what} hold a non-finite value ({bad[1]}) in row {bad[0][0]}")


class DictFeatures:
    """Feature source over one file holding a dict vid -> [n, 768] tensor (NExT-QA, STAR, TVQA).
    Keys are compared as strings."""

    def __init__(self, path):
        from util.files import safe_load
        self.path = str(path)
        obj = safe_load(self.path)
        if not isinstance(obj, dict):
            raise DataError(f"{self.path}: expected a dict video id -> [n, {FEATURE_DIM}] tensor, "
                            f"got {type(obj).__name__}")
        self.feats = {str(k): v for k, v in obj.items()}

    @property
    def where(self) -> str:
        return self.path

    def __contains__(self, vid) -> bool:
        return vid in self.feats

    def n_rows(self, vid: str) -> int:
        """Checks the tensor's shape and that every value is finite (the tensors are in memory)."""
        import torch
        t = self.feats[vid]
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{self.path}: features of video '{vid}' are a {type(t).__name__}, not a tensor")
        n = check_feature_shape(t.shape, vid, self.path, t.dtype)
        check_finite_rows(t, f"video '{vid}'", self.path)
        return n

    def __call__(self, vid: str) -> torch.Tensor:
        if vid not in self.feats:
            raise DataError(f"{self.path}: no features for video '{vid}'")
        self.n_rows(vid)
        return self.feats[vid]


class NpyDirFeatures:
    """Feature source over a folder of `<vid>.npy` arrays [n, 768] (EgoSchema); loaded on demand."""

    def __init__(self, folder):
        self.folder = str(folder)

    @property
    def where(self) -> str:
        return self.folder

    def path(self, vid: str) -> str:
        return os.path.join(self.folder, f"{vid}.npy")

    def __contains__(self, vid) -> bool:
        return os.path.isfile(self.path(vid))

    def n_rows(self, vid: str) -> int:
        """Reads the .npy header only (memory-mapped, no data read)."""
        import numpy as np
        p = self.path(vid)
        try:
            head = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{p}: not a readable .npy file for video '{vid}' (truncated or empty?): {e}") from None
        return check_feature_shape(head.shape, vid, p, head.dtype)

    def __call__(self, vid: str) -> torch.Tensor:
        """The video's rows, read now; a NaN or Inf is a DataError naming the file and row."""
        import numpy as np
        import torch
        p = self.path(vid)
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{p}: cannot load features of video '{vid}' (truncated or empty?): {e}") from None
        check_feature_shape(arr.shape, vid, p, arr.dtype)
        feats = torch.from_numpy(np.ascontiguousarray(arr))
        check_finite_rows(feats, f"video '{vid}'", p)
        return feats


# ---- reading helpers ----

def read_text(path) -> str:
    """A UTF-8 text file (a BOM is dropped); DataError naming the file and line of a byte that is not UTF-8."""
    path = str(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)") from None


def load_json(path):
    """A JSON file, or a DataError naming it."""
    path = str(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None


def json_objects(path):
    """Yields (where "file[i]", object) for a JSON file holding a non-empty list of objects; DataError otherwise."""
    items = load_json(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(items).__name__}")
    if not items:
        raise DataError(f"no questions in {path} (an empty list)")
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a question object, got {type(item).__name__}")
        yield where, item


def jsonl_objects(path, what: str = "question"):
    """Yields (where "file:line", object) for a JSON-lines file (blank lines skipped); DataError otherwise,
    and for a file without a single object. `what` names an object in the messages."""
    n = 0
    for line_no, line in enumerate(io.StringIO(read_text(path)), 1):  # lines end at "\n" only
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a {what} object, got {type(item).__name__}")
        n += 1
        yield where, item
    if n == 0:
        raise DataError(f"no {what}s in {path} (the file is empty)")


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


def gold_index(options: Seq, answer, where: str, rid, item: str = "question", noun: str = "choices") -> int:
    """The index of the option whose text is `answer` (formats that give the gold answer as text: STAR,
    MVBench). An answer matching no option, or several (the gold index is then ambiguous: never the first
    copy), is a DataError naming the file row and the question."""
    hits = [k for k, o in enumerate(options) if o == answer]
    if not hits:
        raise DataError(f"{where}: {item} {rid}: answer {answer!r} is not one of the {noun} {list(options)!r}")
    if len(hits) > 1:
        raise DataError(f"{where}: {item} {rid}: answer {answer!r} matches options {hits} (the same text "
                        f"{len(hits)} times), so the gold option is ambiguous; make the options distinct")
    return hits[0]


def read_csv_rows(path, required: Seq[str], id_key: str):
    """Yields (source "file:line", row dict) of a UTF-8 csv file (a BOM is dropped); DataError for a
    byte that is not UTF-8 (naming the line), a missing column (naming the file and header line), a
    short/long row (naming file:line and the row's id), or a file without a single row."""
    import csv
    path = str(path)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    absent = [k for k in required if k not in header]
    if absent:
        raise DataError(f"{path}:1: missing column(s) {', '.join(absent)} (header: {', '.join(header)})")
    n = 0
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: question {row.get(id_key)}: more fields than the header has")
        short = [k for k in required if row.get(k) is None]
        if short:
            raise DataError(f"{where}: question {row.get(id_key)}: missing '{short[0]}' (row too short)")
        n += 1
        yield where, row
    if n == 0:
        raise DataError(f"no questions in {path} (a header and no rows)")
