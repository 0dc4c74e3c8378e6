"""MVBench: the official `json/<task>.json` files of its 20 tasks, under `<root>/mvbench/json/`, and the
features `<root>/mvbench/clipvitl14.pth` (a dict `"<json file stem>/<item index>"` -> [10, 768], as
extract_features.py writes it; the index is 0-based).

Each item is `{video, question, candidates, answer, start?, end?}`; `answer` is the text of one
candidate, and the gold letter is that candidate's (the first one equal to it). `MVBENCH_TASKS` is the
task table that both the extractor and the evaluation read. MVBench has one split, `test`.
"""
import os
from dataclasses import dataclass
from typing import List, Optional

from text.protocols import LETTERS, choices_text
from util.errors import ConfigError, DataError, MissingFileError

from .base import gold_index, json_objects

SPLITS = ("test",)

# task: (json file stem, folder under <root>/video/, frame folder?, uses the item's start/end)
MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence", "star/Charades_v1_480", False, True),
    "Action Prediction": ("action_prediction", "star/Charades_v1_480", False, True),
    "Action Antonym": ("action_antonym", "ssv2_video", False, False),
    "Fine-grained Action": ("fine_grained_action", "Moments_in_Time_Raw/videos", False, False),
    "Unexpected Action": ("unexpected_action", "FunQA_test/test", False, False),
    "Object Existence": ("object_existence", "clevrer/video_validation", False, False),
    "Object Interaction": ("object_interaction", "star/Charades_v1_480", False, True),
    "Object Shuffle": ("object_shuffle", "perception/videos", False, False),
    "Moving Direction": ("moving_direction", "clevrer/video_validation", False, False),
    "Action Localization": ("action_localization", "sta/sta_video", False, True),
    "Scene Transition": ("scene_transition", "scene_qa/video", False, False),
    "Action Count": ("action_count", "perception/videos", False, False),
    "Moving Count": ("moving_count", "clevrer/video_validation", False, False),
    "Moving Attribute": ("moving_attribute", "clevrer/video_validation", False, False),
    "State Change": ("state_change", "perception/videos", False, False),
    "Fine-grained Pose": ("fine_grained_pose", "nturgbd", False, False),
    "Character Order": ("character_order", "perception/videos", False, False),
    "Egocentric Navigation": ("egocentric_navigation", "vlnqa", False, False),
    "Episodic Reasoning": ("episodic_reasoning", "tvqa/frames_fps3_hq", True, True),
    "Counterfactual Inference": ("counterfactual_inference", "clevrer/video_validation", False, False),
}
TASKS = list(MVBENCH_TASKS)  # the 20 task names, in the published table's order


@dataclass
class MVBenchRecord:
    task: str               # task name, e.g. "Action Sequence"
    stem: str               # its json file stem, e.g. "action_sequence"
    index: int              # 0-based item index in that file
    video: str              # the item's video (file or frame folder name under the task's folder)
    question: str
    candidates: list
    gold: str               # the gold letter
    source: str             # "file[i]" for messages
    start: Optional[float] = None  # the item's window in seconds (None: absent or not a number)
    end: Optional[float] = None

    @property
    def key(self) -> str:
        """The feature key (and the item's id in messages)."""
        return f"{self.stem}/{self.index}"

    def prompt_fields(self) -> dict:
        return {"question": self.question, "choices": choices_text(self.candidates)}


def json_dir(root) -> str:
    return os.path.join(str(root), "mvbench", "json")


def _seconds(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _scalar(v) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool)


def read_task(path: str, task: str, stem: str) -> List[MVBenchRecord]:
    """The items of one task file; DataError naming file[i] for a malformed item."""
    out = []
    for where, item in json_objects(path):
        i = len(out)
        q, cands, ans = item.get("question"), item.get("candidates"), item.get("answer")
        if not isinstance(item.get("video"), str) or not isinstance(q, str):
            raise DataError(f"{where}: item {stem}/{i} needs a 'video' name and a 'question' string")
        if not isinstance(cands, list) or len(cands) < 2 or not all(_scalar(c) for c in cands):
            raise DataError(f"{where}: item {stem}/{i}: 'candidates' must be a list of at least 2 texts, "
                            f"got {cands!r}")
        if len(cands) > len(LETTERS):
            raise DataError(f"{where}: item {stem}/{i} has {len(cands)} candidates (at most {len(LETTERS)})")
        if not _scalar(ans):
            raise DataError(f"{where}: item {stem}/{i}: answer {ans!r} is not one of the candidates {cands!r}")
        gold = gold_index(cands, ans, where, f"{stem}/{i}", item="item", noun="candidates")
        out.append(MVBenchRecord(task, stem, i, item["video"], q, cands, LETTERS[gold], where,
                                 _seconds(item.get("start")), _seconds(item.get("end"))))
    return out


def read_records(root, split: str = "test") -> List[MVBenchRecord]:
    """Every item of the 20 tasks, in the table's task order and file order."""
    if split not in SPLITS:
        raise ConfigError(f"MVBench has one split, test (not {split!r})")
    folder = json_dir(root)
    paths = {name: os.path.join(folder, f"{MVBENCH_TASKS[name][0]}.json") for name in TASKS}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise MissingFileError(f"MVBench: {len(missing)} of the 20 task files are missing, e.g. {missing[0]} "
                               f"(the official json/ folder goes to {folder})")
    return [r for name in TASKS for r in read_task(paths[name], name, MVBENCH_TASKS[name][0])]
