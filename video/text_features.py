"""CLIP text features: TextVid's per-tideo files and the text memory (`memory.pkl`).

  * --dataset textvid: for every tideo of `textvid.json`, one row per entry of each frame dict, frames in
    order and entries in their JSON order -> `<data_root>/textvid/features/<idx>.pkl`, a pickled fp16
    tensor [rows, 768], unit-norm rows. A tideo whose frames are not non-empty dicts of strings fails
    (listed, like a bad video).
  * --dataset memory --sentences FILE (.txt: one sentence a line, empty lines skipped; .json: a list of
    strings) -> `<data_root>/textvid/memory.pkl`, a pickled fp16 tensor [N, 768] of unit-norm rows in
    the file's order. Done in chunks of CHUNK sentences, each saved as it is done, so it resumes too.
"""
import hashlib
import io
import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from dataloader.base import load_json, read_text
from dataloader.benchmarks import memory_file
from dataloader.textvid.tideo import frame_texts, read_tideos, tideo_idx
from util.errors import ConfigError, DataError, MissingFileError
from util.files import safe_load, save_atomic

from .clip import FEATURE_DIM
from .extraction import Batcher, Task, group_size
from .store import DictOutput, FileDirOutput

CHUNK = 4096


@dataclass
class TextUnit:
    keys: List[str]            # one key: the tideo idx, or the memory chunk
    texts: List[str]
    problem: Optional[str] = None


def tideo_units(path: str) -> List[TextUnit]:
    """One unit per tideo of a TextVid json (read and checked by the dataset's reader); a tideo whose frames
    are malformed is a unit with a problem (listed, like a bad video)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"TextVid annotations not found: {path}")
    units = []
    for pos, t in read_tideos(path):
        idx = tideo_idx(t, path, pos)          # an entry that is not a tideo: the file is malformed
        try:
            units.append(TextUnit([idx], frame_texts(t, path, pos)[1]))
        except DataError as e:
            units.append(TextUnit([idx], [], str(e)))
    return units


def read_sentences(path: str) -> List[str]:
    """The sentences of a .txt (UTF-8, one a line, empty lines skipped) or .json (a list of strings)
    file; a file that is not UTF-8 (naming the line), holds no sentence, or an empty JSON string is a
    DataError naming it."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--sentences {path}: no such file")
    if path.endswith(".json"):
        raw = load_json(path)
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise DataError(f"{path}: expected a JSON list of strings")
        empty = [i for i, s in enumerate(raw) if not s.strip()]
        if empty:
            raise DataError(f"{path}[{empty[0]}]: the sentence is empty")
        sentences = raw
    else:
        lines = io.StringIO(read_text(path), newline=None)  # universal newlines, as open() reads
        sentences = [line.rstrip("\n") for line in lines if line.strip()]
    if not sentences:
        raise DataError(f"--sentences {path}: no sentences in the file (the memory needs at least one)")
    return sentences


def memory_units(sentences: List[str]) -> List[TextUnit]:
    units = []
    for a in range(0, len(sentences), CHUNK):
        key = f"rows {a}-{min(a + CHUNK, len(sentences)) - 1}"
        units.append(TextUnit([key], sentences[a:a + CHUNK]))
    return units


class TensorOutput(DictOutput):
    """memory.pkl: one tensor [N, 768], the chunks (keys) concatenated in order. Parts work as for
    DictOutput; a finished file (same settings) means every chunk is done."""

    def done_keys(self, keys) -> set:
        if self.path.exists():
            return set(keys)
        return super().done_keys(keys)

    def finish(self, keys, summary: dict) -> int:
        have = {}
        for p in self._part_files():
            have.update(safe_load(p, mmap=True))
        missing = [k for k in keys if k not in have]
        if missing:
            raise DataError(f"{self.parts}: chunks {missing[:3]} are missing; rerun to compute them")
        mem = torch.cat([have[k] for k in keys]) if keys else torch.zeros(0, FEATURE_DIM, dtype=torch.float16)
        save_atomic(mem, self.path)
        self._write_record(summary, n_keys=int(mem.shape[0]))
        self._remove_parts()
        return len(keys)


def process_texts(groups: List[List[TextUnit]], output, encoder, args, bar):
    """Encode each group's texts (`Batcher`) -> output.add; returns (failures, rows)."""
    batcher = Batcher(encoder.texts, args.batch_size, join=lambda parts: [s for p in parts for s in p])
    failures, rows = [], 0
    for group in groups:
        for u in group:
            if u.problem is not None:
                failures.append({"key": u.keys[0], "path": None, "reason": u.problem})
            else:
                rows += len(u.texts)
                batcher.add(u.keys[0], u.texts)
            bar.update(1)
        for k, feats in batcher.end_group():
            output.add(k, feats)
    return failures, rows


def plan(args, settings: dict) -> Task:
    """The Task for --dataset textvid or memory."""
    root = args.data_root
    if args.dataset == "textvid":
        path = args.annotations or os.path.join(root, "textvid", "textvid.json")
        units = tideo_units(path)
        out = FileDirOutput(args.output or os.path.join(root, "textvid", "features"), settings, suffix=".pkl")
        return Task("textvid", units, out, process_texts, unit_word="tideos", item_word="sentences",
                    group=group_size(args))
    if not args.sentences:
        raise ConfigError("--dataset memory needs --sentences (a .txt file, one sentence a line, or a .json list)")
    sentences = read_sentences(args.sentences)
    digest = hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()[:16]
    settings = dict(settings, sentences=f"{len(sentences)} sentences, sha256 {digest}")
    out = TensorOutput(args.output or memory_file(root), settings, args.save_every)
    return Task("memory", memory_units(sentences), out, process_texts, unit_word="chunks", item_word="sentences",
                bytes_per_key=2 * CHUNK * FEATURE_DIM * 2)  # parts and the final file
