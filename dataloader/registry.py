"""Benchmark name -> reader. `build_mcqa_dataset` reads a published layout under `root` into an
`MCQADataset`; `type_groups` says which accuracy buckets besides "total" a question counts in."""
from functools import partial
from typing import Callable, Dict, List

from . import egoschema, nextqa, star, tvqa
from .base import MCQADataset

_MODULES = {"nextqa": nextqa, "star": star, "tvqa": tvqa, "egos": egoschema}
ALIASES = {"egoschema": "egos", "next-qa": "nextqa", "next_qa": "nextqa"}
# name -> number of options per question
DATASETS: Dict[str, int] = {name: m.N_OPTIONS for name, m in _MODULES.items()}


def canonical_name(name: str) -> str:
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def n_options(name: str) -> int:
    return DATASETS[canonical_name(name)]


def build_mcqa_dataset(name, root, split, builder, max_feats, train=False, skip_missing=False,
                       sub=False, dialogue_max_len=None) -> MCQADataset:
    """The multiple-choice dataset of benchmark `name` ("nextqa", "star", "tvqa", "egos") and `split`.
    Availability of every question's features is checked here; with `skip_missing` questions without
    features are dropped and counted in the returned dataset's `n_skipped` (ids in `skipped`)."""
    mod = _MODULES[canonical_name(name)]
    kw = {"dialogue_max_len": dialogue_max_len} if dialogue_max_len is not None else {}
    if kw and mod is not tvqa:
        raise ValueError(f"--truncate_dialogue is for TVQA only, not {name}")
    return mod.build(root, split, builder, max_feats, train=train, skip_missing=skip_missing, sub=sub, **kw)


def type_groups(name: str, qtype: str) -> List[str]:
    """Accuracy buckets besides "total": NExT-QA [group letter, raw type]; STAR [type]; others []."""
    return list(_MODULES[canonical_name(name)].type_groups(qtype))


def type_groups_for(name: str) -> Callable[[str], List[str]]:
    """`type_groups` bound to one dataset: qtype -> buckets (what engine.accuracy takes)."""
    canonical_name(name)
    return partial(type_groups, name)
