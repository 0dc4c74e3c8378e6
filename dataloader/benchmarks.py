"""The benchmarks, as data: one `Benchmark` per name says how many options its questions have, how its
prompts are worded, how to read a split, where its features are and how their frames were sampled
(the extractor, video/, reads both from here), and which accuracy buckets a question counts in.
`eval.py`, `train.py`, `extract_features.py` and the scripts go through this table; adding a dataset
in one of the published layouts is one entry (a reader returning `QARecord`s, where its features are).

`kind` says how a benchmark is evaluated: "mcqa" scores every option (engine/scoring.py);
"generate" (MVBench, MSR-VTT, VATEX) generates the answer under its `protocol` (text/protocols.py;
engine/generation.py) from records that have a feature `key` and `prompt_fields()`.

The data root's own layout lives here too: `DATA_ROOT` (every `--data_root`'s default) and the TextVid
text memory under it (`memory_file`). Nothing here imports torch (flags and `--help` read this table).
"""
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from text import prompts, protocols
from text.prompts import PromptBuilder, PromptStyle
from text.protocols import GenProtocol
from util.errors import ConfigError

from . import captioning, egoschema, mvbench, nextqa, star, tvqa
from .base import DictFeatures, NpyDirFeatures, QARecord

if TYPE_CHECKING:
    from .mcqa import MCQADataset

DATA_ROOT = "./data"                                  # --data_root: benchmarks, TextVid and the memory below it
MEMORY_FILE = os.path.join("textvid", "memory.pkl")   # the TextVid text-feature memory under the data root


def memory_file(root: str = DATA_ROOT, path: Optional[str] = None) -> str:
    """The text memory a run reads: `path` (--memory_path) when given, else <root>/textvid/memory.pkl."""
    return path or os.path.join(str(root), MEMORY_FILE)


def _no_types(qtype: str) -> List[str]:
    return []


def _raw_type(qtype: str) -> List[str]:
    return [qtype] if qtype else []


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video its feature rows are (video/frames.py implements the rules; see
    docs/extraction.md): `fps` frames a second, MVBench's `mvbench` window rule with `n` segments, or
    `strided` = frames i * (count // n)."""
    rule: str
    n: int


@dataclass(frozen=True)
class Benchmark:
    name: str                                         # --dataset value
    title: str                                        # for messages
    n_options: int
    style: PromptStyle
    read: Callable[[str, str, bool], List[QARecord]]  # (root, split, sub) -> records
    features_at: str                                  # under --data_root: a .pth dict vid -> [n, 768], or a folder
    frames: Sampling                                  # how the feature rows were sampled from the video
    splits: Tuple[str, ...]                           # the splits of the published annotations
    type_groups: Callable[[str], List[str]] = _no_types  # qtype -> accuracy buckets besides "total"
    subtitles: bool = False                           # accepts --sub / --truncate_dialogue
    kind: str = "mcqa"                                # "mcqa" (option scoring) or "generate"
    protocol: Optional[GenProtocol] = None            # generate: prompts, tokens, masks, memory, cut, metric
    default_split: str = "val"                        # the split evaluated without --split / --test

    def feature_file(self, root) -> str:
        return os.path.join(str(root), self.features_at)

    def features(self, root):
        """The feature source under `root` (dataloader.base): one dict file, or a folder of <vid>.npy."""
        path = self.feature_file(root)
        return DictFeatures(path) if path.endswith(".pth") else NpyDirFeatures(path)


def _reader(read):
    """A reader of (root, split) as the table's (root, split, sub)."""
    return lambda root, split, sub: read(root, split)


FPS1, MCQA_SPLITS = Sampling("fps", 1), ("train", "val", "test")
BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("nextqa", "NExT-QA", nextqa.N_OPTIONS, prompts.DEFAULT, _reader(nextqa.read_records),
              "nextqa/clipvitl14.pth", FPS1, MCQA_SPLITS, nextqa.type_groups),
    Benchmark("star", "STAR", star.N_OPTIONS, prompts.STAR, _reader(star.read_records),
              "star/clipvitl14.pth", FPS1, MCQA_SPLITS, _raw_type),
    Benchmark("tvqa", "TVQA", tvqa.N_OPTIONS, prompts.TVQA, tvqa.read_records, "tvqa/clipvitl14.pth",
              Sampling("fps", tvqa.FPS), ("train", "val", "test_public", "test"), subtitles=True),
    Benchmark("egos", "EgoSchema", egoschema.N_OPTIONS, prompts.EGOSCHEMA, _reader(egoschema.read_records),
              "egos/features", FPS1, ("val", "test")),
    Benchmark("mvbench", "MVBench", 0, prompts.DEFAULT, _reader(mvbench.read_records), "mvbench/clipvitl14.pth",
              Sampling("mvbench", 10), ("test",), kind="generate", protocol=protocols.MVBENCH, default_split="test"),
    Benchmark("msrvtt", "MSR-VTT", 0, prompts.DEFAULT,
              lambda root, split, sub: captioning.read_records(root, "msrvtt", split), "msrvtt/clipvitl14.pth",
              Sampling("strided", 10), ("test",), kind="generate", protocol=protocols.MSRVTT, default_split="test"),
    Benchmark("vatex", "VATEX", 0, prompts.DEFAULT,
              lambda root, split, sub: captioning.read_records(root, "vatex", split), "vatex/clipvitl14.pth",
              Sampling("strided", 10), ("test",), kind="generate", protocol=protocols.VATEX, default_split="test"),
]}
ALIASES = {"egoschema": "egos", "next-qa": "nextqa", "next_qa": "nextqa", "msr-vtt": "msrvtt", "msr_vtt": "msrvtt"}


def get(name: str) -> Benchmark:
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def build_mcqa_dataset(name: str, root, split: str, builder: PromptBuilder, *, train: bool = False,
                       skip_missing: bool = False, sub: bool = False,
                       dialogue_max_len: Optional[int] = None) -> "MCQADataset":
    """The multiple-choice dataset of benchmark `name` and `split` under `root`, checked against its
    features (see `make_mcqa_dataset`). `dialogue_max_len` (TVQA): cut dialogue tokens to fit."""
    from .mcqa import make_mcqa_dataset
    b = get(name)
    if b.kind != "mcqa":
        raise ConfigError(f"{b.title} is a generation benchmark: eval.py --dataset {b.name} evaluates it "
                          f"(it has no options to score or train on)")
    if (sub or dialogue_max_len is not None) and not b.subtitles:
        raise ConfigError(f"{b.title} has no subtitles (--sub and --truncate_dialogue are for TVQA)")
    records = b.read(root, split, sub)
    return make_mcqa_dataset(records, b.features(root), builder, b.style, train=train,
                             skip_missing=skip_missing, what=f"{b.title} {split}",
                             dialogue_max_len=dialogue_max_len)
