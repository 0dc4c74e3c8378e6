"""What an answer must be to become a tideo, checked before it is kept.

    tideo = accept(text, job, shape, where)      # the released layout, or Rejected(reason, message)

1. JSON: one object, in the answer's shape (`textvid/prompts/tideo.schema.json`): frames of {caption,
   objects}, QAs, global_video_caption. A frame becomes the released frame dict {"caption": ..., "object_1":
   ..., ...}: one CLIP row per entry (docs/formats.md).
2. The dataset's own checks: `dataloader.textvid.parse_tideo`, the rules `TextVidDataset` applies when it
   loads the file (the one home of per-tideo checks; nothing of them is repeated here).
3. What only generation needs on top: the counts of --frames/--objects/--qas, exactly 5 options per QA and
   all different (compared without case and spacing), no empty or blank text anywhere, an open answer.
4. Near-duplicates: a tideo whose text (lowercased, punctuation and spacing dropped) equals a kept tideo of
   the same seed caption is dropped (`fingerprint`; the run keeps the kept ones per caption group).

`Rejected.reason` is a short category (the table's rows); `.message` says what exactly, naming the QA or frame.
"""
import json
import re
from typing import List, Optional

from dataloader.textvid import Tideo, parse_tideo
from util.errors import DataError

from .config import N_OPTIONS, Shape
from .seeds import Job


class Rejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def to_tideo(text: Optional[str], job: Job) -> dict:
    """The answer's JSON as a tideo in the released layout (step 1)."""
    try:
        obj = json.loads(text or "")
    except json.JSONDecodeError as e:
        raise Rejected("not JSON", f"{e.msg} at character {e.pos}" if text else "the answer is empty") from None
    if not isinstance(obj, dict):
        raise Rejected("shape", f"the answer is a JSON {type(obj).__name__}, not an object")
    frames = obj.get("frames")
    if not isinstance(frames, list):
        raise Rejected("shape", "'frames' is not a list")
    released = []
    for k, f in enumerate(frames):
        objects = f.get("objects") if isinstance(f, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("caption"), str) or not isinstance(objects, list) \
                or not all(isinstance(o, str) for o in objects):
            raise Rejected("shape", f"frame {k} is not {{'caption': text, 'objects': [text, ...]}}")
        released.append({"caption": f["caption"], **{f"object_{i + 1}": o for i, o in enumerate(objects)}})
    source = {"line": job.seed.line, "caption": job.seed.caption}
    if job.seed.domain:
        source["domain"] = job.seed.domain
    return {"idx": job.idx, "frames": released, "QAs": obj.get("QAs"),
            "global_video_caption": obj.get("global_video_caption"), "seed": source}


def _count(n: int, bounds, what: str):
    lo, hi = bounds
    if not lo <= n <= hi:
        raise Rejected(f"{what} out of range", f"{n} {what}, expected {lo} to {hi}")


def generation_checks(t: dict, parsed: Tideo, shape: Shape):
    """Step 3 on a tideo `t` that passed `parse_tideo` (`parsed`, what it gave)."""
    _count(len(t["frames"]), shape.frames, "frames")
    for k, f in enumerate(t["frames"]):
        _count(len(f) - 1, shape.objects, "objects")
        blank = [key for key, v in f.items() if not _text(v)]
        if blank:
            raise Rejected("empty text", f"frame {k}: '{blank[0]}' is empty")
    _count(len(t["QAs"]), shape.qas, "QAs")
    for k, qa in enumerate(t["QAs"]):
        opts = qa["options"]
        if len(opts) != N_OPTIONS:
            raise Rejected("not 5 options", f"QA {k} has {len(opts)} options")
        if not _text(qa["question"]):
            raise Rejected("empty text", f"QA {k}: the question is empty")
        if parsed.qas[k].open_answer is None:
            raise Rejected("empty text", f"QA {k}: no 'answer_open_ended'")
        seen = {}
        for i, o in enumerate(opts):
            key = " ".join(o.casefold().split())
            if key in seen:
                raise Rejected("options not distinct", f"QA {k}: options {seen[key]} and {i} are the same")
            seen[key] = i


def accept(text: Optional[str], job: Job, shape: Shape) -> dict:
    """Steps 1-3 (see the module docstring): the tideo, or Rejected."""
    t = to_tideo(text, job)
    try:
        parsed = parse_tideo(t, "answer", job.order, need_caption=True)
    except DataError as e:
        raise Rejected("dataset check", str(e).removeprefix(f"answer: tideo {job.idx}: ")) from None
    generation_checks(t, parsed, shape)
    return t


def texts(t: dict) -> List[str]:
    """Every text of a tideo, in order: frame entries, then questions, options and open answers, then the summary."""
    out = [v for f in t["frames"] for v in f.values()]
    for qa in t["QAs"]:
        out += [qa["question"], *qa["options"], qa["answer"], qa["answer_open_ended"]]
    return out + [t["global_video_caption"]]


def fingerprint(t: dict) -> str:
    """The tideo's text with case, punctuation and spacing dropped (step 4)."""
    return " ".join(re.sub(r"[\W_]+", " ", " | ".join(texts(t)).casefold()).split())
