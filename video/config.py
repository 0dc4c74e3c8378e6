"""extract_features.py's settings (`ExtractConfig`), the single source of their defaults, types and help
texts (util/settings.py derives the flags), checked in `__post_init__`; the default CLIP model of every
entry point; what `--dataset` can name. Nothing here imports torch (`--help` answers at once).
"""
import os
from dataclasses import dataclass
from typing import List, Optional

from dataloader import benchmarks, tvqa
from util.errors import ConfigError
from util.settings import PRECISIONS, setting

CLIP_MODEL = "openai/clip-vit-large-patch14"   # the one default CLIP of every entry point
VIDEO_DATASETS = tuple(benchmarks.BENCHMARKS) + ("folder",)   # the benchmarks' videos, or any folder of videos
TEXT_DATASETS = ("textvid", "memory")                          # CLIP text features
# videos named by annotation files, sampled at --fps (video/extract.py: JOBS["fps"])
ANNOTATED = tuple(n for n, b in benchmarks.BENCHMARKS.items() if b.frames.rule == "fps")
# videos found by name under --video_dir (the annotated ones and the captioning sets)
SEARCHED = tuple(n for n, b in benchmarks.BENCHMARKS.items() if b.frames.rule in ("fps", "strided")) + ("folder",)
# flags (default None) that only some datasets read: any other dataset would ignore them, so they are refused there
USED_BY = {"video_dir": SEARCHED, "video_map": SEARCHED, "splits": ANNOTATED, "fps": ANNOTATED + ("folder",),
           "mvbench_root": ("mvbench",), "tasks": ("mvbench",), "annotations": ("msrvtt", "vatex", "textvid"),
           "sentences": ("memory",),
           "group": tuple(d for d in VIDEO_DATASETS + TEXT_DATASETS if d != "memory")}  # memory: chunks are groups


def _comma_list(text: str) -> List[str]:
    return text.split(",")


@dataclass
class ExtractConfig:
    GROUP = "what"

    dataset: str = setting(help="what to extract: a benchmark's videos (" + ", ".join(benchmarks.BENCHMARKS) + "), "
                                "any videos (folder: keys are the file names), TextVid's tideos (textvid) or the text "
                                "memory (memory)", choices=VIDEO_DATASETS + TEXT_DATASETS)
    data_root: str = setting(benchmarks.DATA_ROOT, "annotations are read from, and features written to, here")
    video_dir: Optional[str] = setting(None, "videos or frame folders, searched recursively by name (default: none; "
                                             "needed for video datasets except mvbench)")
    video_map: Optional[str] = setting(None, "JSON {key: path} or csv key,path naming videos whose file names differ "
                                             "from the keys (default: none)")
    splits: Optional[List[str]] = setting(None, "nextqa/star/tvqa/egos: comma-separated splits (default: every split "
                                                "found)", parse=_comma_list)
    mvbench_root: Optional[str] = setting(None, "MVBench: the folder holding json/ and video/ (default: none)")
    tasks: Optional[List[str]] = setting(None, "MVBench: comma-separated json stems (default: all 20 tasks)",
                                         parse=_comma_list)
    annotations: Optional[str] = setting(None, "msrvtt/vatex: the annotation json; textvid: textvid.json (default: "
                                               "their files under --data_root)")
    sentences: Optional[str] = setting(None, "memory: .txt (one sentence a line) or .json list (default: none)")
    output: Optional[str] = setting(None, "where to write (default: the benchmark's layout under --data_root); a .pth "
                                          "file holds one dict, any other path is a folder of <key>.npy files")
    fps: Optional[float] = setting(None, "frames per second for nextqa/star/egos/folder (default 1) and tvqa (default "
                                         "3)", group="sampling")
    num_frames: Optional[int] = setting(None, "folder: this many frames per video, from uniform segments, instead of "
                                              "--fps (default: none, --fps)", group="sampling")
    frames_fps: float = setting(tvqa.FPS, "the frame rate of frame folders (TVQA's)", group="sampling")
    clip_model: str = setting(CLIP_MODEL, "CLIP in Hugging Face format: a local folder or a hub name", group="running")
    device: str = setting("auto", "auto, cpu, cuda (torchrun: one GPU per process)", group="running")
    precision: Optional[str] = setting(None, "CLIP compute dtype (default fp16 on GPU, fp32 on CPU); features are "
                                             "stored in fp16", choices=tuple(PRECISIONS), group="running")
    batch_size: int = setting(256, "frames (or sentences) per CLIP forward pass", group="running")
    num_workers: int = setting(min(8, os.cpu_count() or 1),
                               "DataLoader workers decoding videos (0: decode in this process)", group="running")
    group: Optional[int] = setting(None, "videos (tideos) encoded together: their frames, in order, are cut into "
                                         "--batch_size batches, so features never depend on where a run was "
                                         "interrupted; a group is saved, and redone after an interruption, as a whole "
                                         "(default: batch_size // 16)", group="running")
    save_every: int = setting(100, "save finished results every N videos", group="running")
    skip_bad: bool = setting(False, "write the output without the videos that failed (they are still listed)",
                             group="running")
    overwrite: bool = setting(False, "delete earlier results of this output and start over (default: resume)",
                              group="running")
    max_videos: Optional[int] = setting(None, "stop after this many videos per process; rerun to continue (default: "
                                              "all of them)", group="running")
    quiet: bool = setting(False, "no progress bar", group="running")

    def __post_init__(self):
        if self.fps is not None and self.num_frames is not None:
            raise ConfigError("--fps and --num_frames exclude each other")
        if self.num_frames is not None and self.dataset != "folder":
            raise ConfigError("--num_frames is for --dataset folder (the benchmarks have their own rules)")
        for name, datasets in USED_BY.items():
            if getattr(self, name) is not None and self.dataset not in datasets:
                raise ConfigError(f"--{name} is for --dataset {', '.join(datasets)}; --dataset {self.dataset} does "
                                  "not use it")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError("--fps must be positive")
        for name in ("batch_size", "group", "save_every", "max_videos", "num_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"--num_workers must be >= 0, got {self.num_workers}")
