"""Multiple-choice datasets of every benchmark: records + a feature source -> `EvalItem`s.

`make_mcqa_dataset` checks every record against its features before anything runs (unique ids, a
[n, 768] feature tensor, a clip that overlaps it, answers for training), so a bad file fails at start
naming the questions, or with `skip_missing` they are dropped and counted."""
import sys
from typing import Dict, List, Optional

from torch.utils.data import Dataset

from text.prompts import PromptBuilder, PromptStyle, text_problem
from util import dist

from .base import DataError, EvalItem, QARecord, fit_frames


class MCQADataset(Dataset):
    """Items of one benchmark split: each question's fitted video and one mcqa sequence per option.
    T (frames per video) is the prompt builder's, which is the model's `max_feats`."""

    def __init__(self, records: List[QARecord], features, builder: PromptBuilder, style: PromptStyle,
                 dialogue_max_len: Optional[int] = None, what: str = ""):
        self.records, self.features, self.builder, self.style = records, features, builder, style
        self.dialogue_max_len = dialogue_max_len  # TVQA: cut dialogue tokens to fit (opt-in)
        self.what = what
        self.skipped: List[str] = []             # ids of questions dropped by skip_missing

    @property
    def T(self) -> int:
        return self.builder.T

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self):
        return len(self.records)

    def video(self, r: QARecord):
        feats = self.features(r.vid)
        if r.clip is not None:
            a, b = r.clip
            clip = feats[a:b + 1]
            if clip.shape[0] == 0:
                raise DataError(f"{r.source}: question {r.qid}: clip rows {a}..{b} are outside video "
                                f"'{r.vid}' ({feats.shape[0]} feature rows)")
            feats = clip
        return fit_frames(feats, self.T)

    def sequences(self, r: QARecord, task: str = "mcqa", answer: Optional[int] = None):
        """The `task` sequence ("mcqa", "vaq", "qav") of record r with answer `answer` (default: its own)."""
        build = {"mcqa": self.builder.mcqa, "vaq": self.builder.vaq, "qav": self.builder.qav}[task]
        return build(r.question, r.options, r.answer if answer is None else answer, style=self.style,
                     dialogue=r.dialogue, max_len=self.dialogue_max_len)

    def __getitem__(self, i) -> EvalItem:
        r = self.records[i]
        return EvalItem(i, r, self.video(r), [self.sequences(r, answer=k) for k in range(len(r.options))])


def _id_list(ids, k: int = 5) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:k])) + (f", ... ({len(ids)} in all)" if len(ids) > k else f" ({len(ids)})")


def make_mcqa_dataset(records: List[QARecord], features, builder: PromptBuilder, style: PromptStyle,
                      train: bool = False, skip_missing: bool = False, what: str = "",
                      dialogue_max_len: Optional[int] = None) -> MCQADataset:
    """Checks every record against its feature source before anything runs: ids unique, question and
    option texts not empty, the video has features of width 768 (all finite where they are in memory),
    its clip overlaps the feature rows, and (training) an answer exists. Questions without usable
    features are a DataError naming them, or with `skip_missing` dropped with a one-line warning; the
    dataset's `skipped` lists their ids (dropping every question is an error)."""
    seen = {}
    for r in records:
        if r.qid in seen:
            raise DataError(f"{r.source}: question id {r.qid} repeats the one of {seen[r.qid].source} (ids must be "
                            "unique: predictions and submissions are keyed by them)")
        seen[r.qid] = r
        problem = text_problem(str(r.question), [str(o) for o in r.options])
        if problem:
            raise DataError(f"{r.source}: question {r.qid}: {problem}")
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
            parts.append(f"{len(missing)} have no features in {features.where} "
                         f"(question/video: {_id_list(f'{r.qid}/{r.vid}' for r in missing)})")
        if outside:
            parts.append(f"{len(outside)} have no feature rows in their clip "
                         f"(question: {_id_list(f'{r.qid} rows {r.clip} of {rows[r.vid]}' for r in outside)})")
        msg = f"{what}: of {len(records)} questions, " + "; ".join(parts)
        if not skip_missing:
            raise DataError(msg + " (--skip_missing drops them)")
        if not kept:
            raise DataError(msg + ": no question left to use")
        if dist.is_main():
            print(f"warning: {msg}; skipped {len(bad)} questions", file=sys.stderr, flush=True)
    ds = MCQADataset(kept, features, builder, style, dialogue_max_len=dialogue_max_len, what=what)
    ds.skipped = [r.qid for r in bad]
    return ds
