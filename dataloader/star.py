"""STAR: `<root>/star/STAR_{split}.json` + `<root>/star/clipvitl14.pth` (one row per second)."""
import math
import os
from typing import List

from util.errors import MissingFileError

from .base import DataError, QARecord, gold_index, json_objects, require

N_OPTIONS = 4


def annotation_path(root, split) -> str:
    return os.path.join(str(root), "star", f"STAR_{split}.json")


def _seconds(v, key, where, qid) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise DataError(f"{where}: question {qid}: '{key}' = {v!r} is not a number of seconds") from None
    if not math.isfinite(x) or x < 0:
        raise DataError(f"{where}: question {qid}: '{key}' = {v!r} is not a valid time")
    return x


def _options(item, where, qid) -> List[str]:
    choices = require(item, "choices", where, qid)
    if not isinstance(choices, list) or len(choices) != N_OPTIONS:
        raise DataError(f"{where}: question {qid}: expected {N_OPTIONS} choices, got {choices!r}")
    by_id = {}
    for c in choices:
        cid, text = require(c, "choice_id", where, qid), require(c, "choice", where, qid)
        try:
            cid = int(cid)
        except (TypeError, ValueError):
            raise DataError(f"{where}: question {qid}: choice_id {cid!r} is not an integer") from None
        by_id[cid] = text
    if sorted(by_id) != list(range(N_OPTIONS)):
        raise DataError(f"{where}: question {qid}: choice ids {sorted(by_id)} are not 0..{N_OPTIONS - 1}")
    return [by_id[i] for i in range(N_OPTIONS)]


def read_records(root, split) -> List[QARecord]:
    path = annotation_path(root, split)
    if not os.path.isfile(path):
        raise MissingFileError(f"STAR {split} annotations not found: {path}")
    records = []
    for where, item in json_objects(path):
        qid = require(item, "question_id", where, None)
        vid = str(require(item, "video_id", where, qid))
        question = require(item, "question", where, qid)
        start = _seconds(require(item, "start", where, qid), "start", where, qid)
        end = _seconds(require(item, "end", where, qid), "end", where, qid)
        a, b = round(start), round(end)
        if b < a:
            raise DataError(f"{where}: question {qid}: end {end} is before start {start}")
        options = _options(item, where, qid)
        answer = item.get("answer")
        if answer is None:
            if not split.startswith("test"):
                raise DataError(f"{where}: question {qid}: missing 'answer'")
        else:
            answer = gold_index(options, answer, where, qid)
        records.append(QARecord(vid=vid, qid=str(qid), question=question, options=options, answer=answer,
                                qtype=str(qid).split("_", 1)[0], clip=(a, b), source=where))
    return records
