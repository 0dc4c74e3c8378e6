"""TextVid: "tideos" whose frames are LLM-written text, encoded by CLIP's text encoder.

    <root>/textvid/textvid.json        [{idx, frames: [{...}, ...], QAs: [{question, options, answer: 'A'..,
                                         answer_open_ended?}], global_video_caption}, ...]
    <root>/textvid/features/<idx>.pkl  pickled tensor [sum of entries of every frame dict, 768], frame order

Made once from them, shared by every rank and worker (docs/formats.md):

    textvid.index.arrow   the json parsed and checked into a memory-mapped Arrow file (`index.py`): built
                          by the first run that finds none for the json as it is (or ahead of time with
                          `python -m dataloader.textvid index DIR`), rebuilt when the json changes
    features_packed/      optional: the feature files packed into a few shards (`features.py`;
                          `python -m dataloader.textvid pack DIR`), read instead of features/ when current

Every random choice of an item (which QA, the option shuffle of --answer_balance, open QA vs summary,
the --variance noise) comes from a generator seeded by (seed, epoch, index): the same item of the same
epoch is the same in any worker, on any rank, and after --resume. The batch kind (mcqa or "caption")
is decided by the batch sampler (`dataloader.train_batches.TaskBatchSampler`), which hands `(epoch, index,
kind)` keys to `__getitem__`.

The annotations are checked when the index is built (answer letters, frames, QAs, captions: `tideo.py`),
and that every tideo has its features when the dataset is built, so a bad file fails before training
starts, naming the tideo. A feature file whose row count does not match its frames fails when read,
naming the file and tideo. Nothing is ever silently replaced by another sample.
"""
import os
from typing import List, Optional, Sequence as Seq, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from text.prompts import PromptBuilder
from util import dist
from util.errors import MissingFileError

from ..base import TrainItem, fit_frames, fuse_text_frames
from .features import check_rows, open_features, packed_dir
from .index import TideoIndex, open_index
from .tideo import OPTION_LETTERS, TextQA, Tideo, frame_texts, parse_tideo, read_tideos  # noqa: F401

BALANCE_KEEP = ("both", "all", "none", "and")  # options naming others keep their place (--answer_balance)
OPEN_SKIP = ("both", "all")                    # answers that make no sense as free text (--openvqa)


def contains_any(text: str, words: Seq[str]) -> bool:
    t = text.lower()
    return any(w in t for w in words)


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item of one epoch (independent of workers, ranks and call order)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class TextVidDataset(Dataset):
    """Training items of TextVid. `__getitem__((epoch, index, kind))` with kind "vqa" (the item's mcqa
    sequence) or "caption" (its summary, or its open-QA sequence); a plain int index means epoch 0, "vqa".

    Items are `TrainItem`s whose seqs hold "vqa" (plus "vaq"/"qav" when asked for) or "caption". T (frames
    per video) is the prompt builder's, which is the model's `max_feats`. `tideos` is the index (a
    sequence of `Tideo`s, each made when asked for)."""

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
        if not os.path.isdir(self.feature_dir) and not (packed_dir(self.feature_dir) / "pack.json").is_file():
            raise MissingFileError(f"TextVid feature folder not found: {self.feature_dir}")
        self.tideos: TideoIndex = open_index(self.json_path, need_caption=video_caption)
        self.features = open_features(self.feature_dir, self.tideos, announce=dist.is_main())

    def __len__(self):
        return len(self.tideos)

    def frames(self, t: Tideo, rng: np.random.Generator) -> torch.Tensor:
        """[n_frames, 768] fused frame features of tideo `t`."""
        rows, where = self.features.read(t)
        check_rows(rows, t, where)
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
        t = self.tideos[int(index)]
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
