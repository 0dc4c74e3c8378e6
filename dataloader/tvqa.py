"""TVQA: `<root>/tvqa/tvqa_{split}.jsonl` + `<root>/tvqa/clipvitl14.pth` (3 fps), optional
subtitles `<root>/tvqa/tvqa_subtitles/<vid_name>.srt` (`sub=True`).

Every TVQA sequence uses the dialogue prompt style (`text.prompts.TVQA`); the "Dialogue:" segment is there
only with `sub=True` and when the clip has subtitle lines."""
import math
import os
from typing import Dict, List, Optional, Tuple

from util.errors import MissingFileError

from .base import DataError, QARecord, jsonl_objects, parse_answer, require

N_OPTIONS = 5
OPTION_KEYS = [f"a{i}" for i in range(N_OPTIONS)]
FPS = 3  # TVQA's features and frame folders; every frame folder's default rate (video.frames.FOLDER_FPS)


def annotation_path(root, split) -> str:
    return os.path.join(str(root), "tvqa", f"tvqa_{split}.jsonl")


def subtitle_path(root, vid: str) -> str:
    return os.path.join(str(root), "tvqa", "tvqa_subtitles", f"{vid}.srt")


def parse_ts(ts, where: str, qid) -> Optional[Tuple[float, float]]:
    """"s-e" -> (s, e) seconds; "NaN-NaN" -> None (the whole video); anything else -> DataError."""
    parts = ts.split("-") if isinstance(ts, str) else []
    try:
        if len(parts) != 2:
            raise ValueError
        s, e = float(parts[0]), float(parts[1])
    except ValueError:
        raise DataError(f"{where}: question {qid}: malformed ts {ts!r} (expected \"start-end\" seconds "
                        f"or \"NaN-NaN\")") from None
    if math.isnan(s) and math.isnan(e):
        return None
    if not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e < s:
        raise DataError(f"{where}: question {qid}: malformed ts {ts!r} (expected 0 <= start <= end, "
                        f"or \"NaN-NaN\")")
    return s, e


def clip_rows(span: Optional[Tuple[float, float]]) -> Optional[Tuple[int, int]]:
    """Feature rows 3*round(s) .. 3*(round(e)+1)-1 inclusive; None (whole video) for NaN-NaN."""
    if span is None:
        return None
    s, e = span
    return FPS * round(s), FPS * (round(e) + 1) - 1


def read_subtitles(path: str, rid) -> List[Tuple[int, int, str]]:
    """(start second, end second, text) per entry of an .srt file. Times are whole seconds
    (hours*3600 + minutes*60 + seconds; milliseconds dropped), newlines in the text become spaces."""
    import srt
    if not os.path.isfile(path):
        raise DataError(f"question {rid}: subtitle file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    try:
        subs = list(srt.parse(text))
    except srt.SRTParseError as e:
        raise DataError(f"{path}: malformed subtitles (question {rid}): {e}") from None
    return [(int(s.start.total_seconds()), int(s.end.total_seconds()),
             s.content.replace("\r\n", "\n").replace("\n", " ")) for s in subs]


def dialogue(entries, span: Optional[Tuple[float, float]]) -> Optional[str]:
    """The clip's dialogue D: every entry whose *end* second lies in [round(s), round(e)] (every entry
    for None, i.e. "NaN-NaN"), each text preceded by one space, concatenated; None when no entry is
    kept (the prompt then has no "Dialogue:" segment)."""
    if span is not None:
        a, b = round(span[0]), round(span[1])
        entries = [x for x in entries if a <= x[1] <= b]
    return "".join(" " + t for _, _, t in entries) if entries else None


def read_records(root, split, sub: bool = False) -> List[QARecord]:
    path = annotation_path(root, split)
    if not os.path.isfile(path):
        raise MissingFileError(f"TVQA {split} annotations not found: {path}")
    records = []
    subs: Dict[str, list] = {}
    for where, item in jsonl_objects(path):
        qid = require(item, "qid", where, None)
        vid = str(require(item, "vid_name", where, qid))
        question = require(item, "q", where, qid)
        options = [require(item, k, where, qid) for k in OPTION_KEYS]
        answer = parse_answer(item.get("answer_idx"), N_OPTIONS, where, qid, allow_none=split.startswith("test"))
        span = parse_ts(require(item, "ts", where, qid), where, qid)
        rec = QARecord(vid=vid, qid=str(qid), question=question, options=options, answer=answer,
                       qtype="", clip=clip_rows(span), source=where)
        if sub:
            if vid not in subs:
                subs[vid] = read_subtitles(subtitle_path(root, vid), f"{qid} ({where})")
            rec.dialogue = dialogue(subs[vid], span)
        records.append(rec)
    return records
