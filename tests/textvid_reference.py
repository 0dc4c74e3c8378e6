"""Today's TextVid reader, kept verbatim as the reference of the same-items test and of
bench/bench_textvid.py (never imported by runtime code): the whole `textvid.json` parsed into Python
objects (a `Tideo` per tideo) when the dataset is built, one `features/<idx>.pkl` read per item.

It is `dataloader/textvid.py` as of commit 82895c2 with only its imports made absolute and the dataset
renamed `ReferenceTextVidDataset`."""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence as Seq, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from text.prompts import LETTERS, PromptBuilder
from util.errors import InputError, MissingFileError
from util.files import load_pickled_tensor

from dataloader.base import (FEATURE_DIM, DataError, TrainItem, check_finite_rows, check_float, fit_frames,
                             fuse_text_frames, load_json)

OPTION_LETTERS = LETTERS[:5]  # a TextVid QA holds 5 options, A..E (docs/formats.md)

BALANCE_KEEP = ("both", "all", "none", "and")  # options naming others keep their place (--answer_balance)
OPEN_SKIP = ("both", "all")                    # answers that make no sense as free text (--openvqa)


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


def contains_any(text: str, words: Seq[str]) -> bool:
    t = text.lower()
    return any(w in t for w in words)


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item of one epoch (independent of workers, ranks and call order)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def parse_tideo(t, where: str, pos: int, need_caption: bool) -> Tideo:
    if not isinstance(t, dict) or "idx" not in t:
        raise DataError(f"{where}: entry {pos} is not a tideo with an 'idx'")
    idx = str(t["idx"])
    tag = f"{where}: tideo {idx}"
    frames = t.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{tag}: 'frames' must be a non-empty list of frame dicts")
    counts = []
    for k, f in enumerate(frames):
        if not isinstance(f, dict) or not f:
            raise DataError(f"{tag}: frame {k} must be a non-empty dict (one feature row per entry)")
        counts.append(len(f))
    qas_raw = t.get("QAs")
    if not isinstance(qas_raw, list) or not qas_raw:
        raise DataError(f"{tag}: 'QAs' must be a non-empty list")
    qas = []
    for k, qa in enumerate(qas_raw):
        if not isinstance(qa, dict):
            raise DataError(f"{tag}: QA {k} is not a dict")
        for key in ("question", "options", "answer"):
            if key not in qa:
                raise DataError(f"{tag}: QA {k} has no '{key}'")
        opts = qa["options"]
        if not isinstance(opts, list) or not 2 <= len(opts) <= len(OPTION_LETTERS) \
                or not all(isinstance(o, str) for o in opts):
            raise DataError(f"{tag}: QA {k}: 'options' must be a list of 2..{len(OPTION_LETTERS)} strings")
        empty = [i for i, o in enumerate(opts) if not o.strip()]
        if empty:
            raise DataError(f"{tag}: QA {k}: option {empty[0]} is empty")
        a = qa["answer"]
        valid = OPTION_LETTERS[:len(opts)]
        if not isinstance(a, str) or len(a.strip()) != 1 or a.strip() not in valid:
            raise DataError(f"{tag}: QA {k}: answer {a!r} is not one of the option letters "
                            f"{', '.join(valid)} ({len(opts)} options)")
        open_answer = qa.get("answer_open_ended")
        open_answer = open_answer.strip() if isinstance(open_answer, str) and open_answer.strip() else None
        qas.append(TextQA(str(qa["question"]), tuple(opts), valid.index(a.strip()), open_answer))
    caption = t.get("global_video_caption")
    if need_caption and not (isinstance(caption, str) and caption.strip()):
        raise DataError(f"{tag}: no 'global_video_caption' (needed by --video_caption)")
    return Tideo(idx, tuple(counts), tuple(qas), caption)


class ReferenceTextVidDataset(Dataset):
    """Training items of TextVid. `__getitem__((epoch, index, kind))` with kind "vqa" (the item's mcqa
    sequence) or "caption" (its summary, or its open-QA sequence); a plain int index means epoch 0, "vqa".

    Items are `TrainItem`s whose seqs hold "vqa" (plus "vaq"/"qav" when asked for) or "caption". T (frames
    per video) is the prompt builder's, which is the model's `max_feats`."""

    def __init__(self, root, builder: PromptBuilder, *, seed: int = 0, variance: float = 0.0,
                 answer_balance: bool = False, video_caption: bool = False, openvqa: bool = False,
                 vaq: bool = False, qav: bool = False, json_path: Optional[str] = None,
                 feature_dir: Optional[str] = None):
        self.json_path = json_path or os.path.join(str(root), "textvid", "textvid.json")
        self.feature_dir = feature_dir or os.path.join(str(root), "textvid", "features")
        self.builder, self.seed, self.variance = builder, seed, float(variance)
        self.answer_balance, self.video_caption, self.openvqa = answer_balance, video_caption, openvqa
        self.vaq, self.qav = vaq, qav
        if not os.path.isfile(self.json_path):
            raise MissingFileError(f"TextVid annotations not found: {self.json_path}")
        if not os.path.isdir(self.feature_dir):
            raise MissingFileError(f"TextVid feature folder not found: {self.feature_dir}")
        raw = load_json(self.json_path)
        if not isinstance(raw, list):
            raise DataError(f"{self.json_path}: expected a list of tideos")
        if not raw:
            raise DataError(f"no tideos in {self.json_path} (an empty list)")
        self.tideos: List[Tideo] = [parse_tideo(t, self.json_path, i, video_caption) for i, t in enumerate(raw)]
        del raw
        seen, dups = set(), []
        for t in self.tideos:
            if t.idx in seen:
                dups.append(t.idx)
            seen.add(t.idx)
        if dups:
            raise DataError(f"{self.json_path}: duplicate tideo idx {dups[:5]} ({len(dups)} in all)")
        with os.scandir(self.feature_dir) as it:   # one directory listing, not a stat per tideo
            present = {e.name for e in it}
        missing = [t.idx for t in self.tideos if f"{t.idx}.pkl" not in present]
        if missing:
            raise DataError(f"{self.feature_dir}: no features file for {len(missing)} of {len(self.tideos)} "
                            f"tideos: {', '.join(f'{m}.pkl (tideo {m})' for m in missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")

    def __len__(self):
        return len(self.tideos)

    def feature_path(self, t: Tideo) -> str:
        return os.path.join(self.feature_dir, f"{t.idx}.pkl")

    def frames(self, t: Tideo, rng: np.random.Generator) -> torch.Tensor:
        """[n_frames, 768] fused frame features of tideo `t`."""
        path = self.feature_path(t)
        if not os.path.isfile(path):
            raise DataError(f"{path}: features file of tideo {t.idx} is missing")
        try:
            rows = load_pickled_tensor(path)
        except InputError as e:  # its message names the file: add the tideo
            raise type(e)(f"{e} (features of tideo {t.idx})") from None
        want = sum(t.counts)
        if rows.ndim != 2 or rows.shape[1] != FEATURE_DIM or rows.shape[0] != want:
            raise DataError(f"{path}: features of tideo {t.idx} have shape {list(rows.shape)}, but its "
                            f"{len(t.counts)} frames have {want} entries in all: expected [{want}, {FEATURE_DIM}]")
        check_float(rows.dtype, f"tideo {t.idx}", path)
        check_finite_rows(rows, f"tideo {t.idx}", path)
        gen = None
        if self.variance > 0:
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        return fuse_text_frames(rows, t.counts, self.variance, generator=gen)

    def draw_qa(self, t: Tideo, rng: np.random.Generator) -> Tuple[TextQA, List[str], int]:
        """The item's QA (one of its tideo's, at random) and its options and answer after --answer_balance."""
        qa = t.qas[int(rng.integers(len(t.qas)))]
        options, answer = list(qa.options), qa.answer
        if self.answer_balance and not contains_any(options[answer], BALANCE_KEEP):
            perm = rng.permutation(len(options))          # new position j holds old option perm[j]
            options = [options[j] for j in perm]
            answer = int(np.flatnonzero(perm == answer)[0])
        return qa, options, answer

    def question(self, epoch: int, index: int) -> Tuple[str, List[str], int]:
        """(question, options, answer) that item `index` of `epoch` holds (what its sequences say)."""
        qa, options, answer = self.draw_qa(self.tideos[index], item_rng(self.seed, epoch, index))
        return qa.question, options, answer

    def __getitem__(self, key) -> TrainItem:
        epoch, index, kind = (0, key, "vqa") if isinstance(key, (int, np.integer)) else key
        t = self.tideos[index]
        rng = item_rng(self.seed, epoch, index)
        qa, options, answer = self.draw_qa(t, rng)
        right = options[answer]
        video = fit_frames(self.frames(t, rng), self.builder.T)
        b = self.builder
        if kind == "vqa":
            seqs = {"vqa": b.mcqa(qa.question, options, answer)}
            if self.vaq:
                seqs["vaq"] = b.vaq(qa.question, options, answer)
            if self.qav:
                seqs["qav"] = b.qav(qa.question, options, answer)
        elif kind == "caption":
            use_open = (self.openvqa and rng.random() < 0.5 and qa.open_answer is not None
                        and not contains_any(right, OPEN_SKIP))
            seqs = {"caption": b.openqa(qa.question, qa.open_answer) if use_open else b.caption(t.caption)}
        else:
            raise ValueError(f"unknown batch kind {kind!r}")
        return TrainItem(index, t.idx, video, kind, seqs)
