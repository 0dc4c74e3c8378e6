"""What a tideo is, and its checks: the one home of TextVid's rules, used by the dataset's index, by
`extract_features.py --dataset textvid` (the frame texts) and by anything that writes tideos.

    read_tideos(path)        -> (position, entry) of every entry of a textvid.json, streamed
    parse_tideo(t, where, pos, need_caption) -> Tideo, or a DataError naming the file and the tideo
    frame_texts(t, where, pos) -> the texts CLIP encodes, one per frame entry, frames in order

`read_tideos` reads the file in windows of `WINDOW` bytes and decodes one entry at a time with the
standard library's JSON decoder, so the file is never held whole, neither as text nor as Python objects.
A file that is not UTF-8, not JSON, not a list, or an empty list is a DataError with the same message as
reading it whole would give (`dataloader.base.load_json`).
"""
import codecs
import json
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from text.prompts import LETTERS

from ..base import DataError, load_json, read_text

OPTION_LETTERS = LETTERS[:5]  # a TextVid QA holds 5 options, A..E (docs/formats.md)
WINDOW = 16 << 20             # bytes read and decoded at a time by `read_tideos`


@dataclass(frozen=True)
class TextQA:
    question: str
    options: Tuple[str, ...]
    answer: int
    open_answer: Optional[str]


@dataclass(frozen=True)
class Tideo:
    idx: str
    counts: Tuple[int, ...]     # entries of each frame dict = feature rows of each frame
    qas: Tuple[TextQA, ...]
    caption: Optional[str]
    pos: int = -1               # its position in textvid.json (and in the dataset)


def tideo_idx(t, where: str, pos: int) -> str:
    """The tideo's id; an entry that is not a dict with an 'idx' is a DataError naming its position."""
    if not isinstance(t, dict) or "idx" not in t:
        raise DataError(f"{where}: entry {pos} is not a tideo with an 'idx'")
    return str(t["idx"])


def frame_counts(frames, tag: str) -> List[int]:
    """The number of entries of each frame dict (= its feature rows)."""
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{tag}: 'frames' must be a non-empty list of frame dicts")
    counts = [len(f) if isinstance(f, dict) else 0 for f in frames]
    if not all(counts):
        raise DataError(f"{tag}: frame {counts.index(0)} must be a non-empty dict (one feature row per entry)")
    return counts


def frame_texts(t, where: str, pos: int) -> Tuple[str, List[str]]:
    """(idx, texts): the entries of every frame in order, each a string (what CLIP encodes, one feature
    row per entry); DataError naming the tideo otherwise."""
    idx = tideo_idx(t, where, pos)
    tag = f"{where}: tideo {idx}"
    frame_counts(t.get("frames"), tag)
    texts = []
    for k, fr in enumerate(t["frames"]):
        bad = [name for name, v in fr.items() if not isinstance(v, str)]
        if bad:
            raise DataError(f"{tag}: frame {k}: entry '{bad[0]}' is not text")
        texts += fr.values()
    return idx, texts


def parse_qa(qa, k: int, tag: str) -> TextQA:
    if not isinstance(qa, dict):
        raise DataError(f"{tag}: QA {k} is not a dict")
    try:
        question, opts, a = qa["question"], qa["options"], qa["answer"]
    except KeyError:
        missing = next(key for key in ("question", "options", "answer") if key not in qa)
        raise DataError(f"{tag}: QA {k} has no '{missing}'") from None
    n = len(opts) if isinstance(opts, list) else 0
    if not 2 <= n <= len(OPTION_LETTERS) or not all([isinstance(o, str) for o in opts]):
        raise DataError(f"{tag}: QA {k}: 'options' must be a list of 2..{len(OPTION_LETTERS)} strings")
    if not all(map(str.strip, opts)):
        raise DataError(f"{tag}: QA {k}: option {[bool(o.strip()) for o in opts].index(False)} is empty")
    letter = a.strip() if isinstance(a, str) else ""
    answer = OPTION_LETTERS.find(letter) if len(letter) == 1 else -1
    if not 0 <= answer < n:
        raise DataError(f"{tag}: QA {k}: answer {a!r} is not one of the option letters "
                        f"{', '.join(OPTION_LETTERS[:n])} ({n} options)")
    open_answer = qa.get("answer_open_ended")
    open_answer = (open_answer.strip() or None) if isinstance(open_answer, str) else None
    return TextQA(str(question), tuple(opts), answer, open_answer)


def parse_tideo(t, where: str, pos: int, need_caption: bool) -> Tideo:
    """Entry `pos` of the TextVid file `where` as a Tideo: every check of a tideo (its idx, frames, QAs,
    answer letters; its summary when `need_caption`), a DataError naming the file and the tideo otherwise.
    The summary is kept only when it is a non-blank string (None otherwise)."""
    idx = tideo_idx(t, where, pos)
    tag = f"{where}: tideo {idx}"
    counts = frame_counts(t.get("frames"), tag)
    qas_raw = t.get("QAs")
    if not isinstance(qas_raw, list) or not qas_raw:
        raise DataError(f"{tag}: 'QAs' must be a non-empty list")
    qas = tuple(parse_qa(qa, k, tag) for k, qa in enumerate(qas_raw))
    caption = t.get("global_video_caption")
    if not (isinstance(caption, str) and caption.strip()):
        if need_caption:
            raise DataError(f"{tag}: no 'global_video_caption' (needed by --video_caption)")
        caption = None
    return Tideo(idx, tuple(counts), qas, caption, pos)


# ---- the file, streamed ----

_SPACE = re.compile(r"[ \t\n\r]*")


class _Window:
    """The file's text from `i` on, decoded as it is read, WINDOW bytes at a time."""

    def __init__(self, f):
        self.f, self.decoder = f, codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.i, self.eof = "", 0, False

    def more(self) -> bool:
        """Read the next window (keeping what is not consumed); False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(WINDOW)
        self.eof = not raw
        self.text = self.text[self.i:] + self.decoder.decode(raw, final=self.eof)
        self.i = 0
        return True

    def next_char(self) -> str:
        """The next character that is not white space ('' at the end of the file), not consumed."""
        while True:
            self.i = _SPACE.match(self.text, self.i).end()
            if self.i < len(self.text) or not self.more():
                return self.text[self.i:self.i + 1]

    def value(self, decoder: json.JSONDecoder):
        """The JSON value starting at the next character that is not white space; (None, False) where the
        file is malformed there."""
        self.next_char()
        if len(self.text) - self.i < WINDOW // 4:  # read ahead: a value is rarely cut by the window's end
            self.more()
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.i)
                if end < len(self.text) or self.eof:   # a value cut by the window's end is read again
                    self.i = end
                    return value, True
            except json.JSONDecodeError:
                if self.eof:
                    return None, False
            self.more()


def read_tideos(path: str) -> Iterator[Tuple[int, object]]:
    """(position, entry) of every entry of the list in a TextVid json file, in order (see the module
    docstring). A file that is not a non-empty JSON list is a DataError naming it."""
    with open(path, "rb") as f:
        w = _Window(f)
        try:
            if w.next_char() != "[":
                _whole_file(path)
            w.i += 1
            if w.next_char() == "]":
                w.i += 1
                if w.next_char():
                    _whole_file(path)
                raise DataError(f"no tideos in {path} (an empty list)")
            decoder, pos = json.JSONDecoder(), 0
            while True:
                value, ok = w.value(decoder)
                if not ok:
                    _whole_file(path)
                yield pos, value
                pos += 1
                c = w.next_char()
                w.i += 1
                if c == "]":
                    break
                if c != ",":
                    _whole_file(path)
            if w.next_char() != "":
                _whole_file(path)
        except UnicodeDecodeError:
            read_text(path)   # raises the DataError naming the line
            raise


def _whole_file(path: str):
    """Where the streamed reading finds the file malformed: read it whole for the error `load_json` gives
    (the same message, line and column as before), or the one of a top level that is not a list."""
    raw = load_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of tideos")
    raise DataError(f"no tideos in {path} (an empty list)" if not raw else f"{path}: not valid JSON")
