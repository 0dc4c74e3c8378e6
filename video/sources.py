"""What to extract for each benchmark: jobs of (video path, [(feature key, sampling rule)]).

Video lists come from the annotation files (read with the benchmark readers of `dataloader/`, so the
keys are exactly the ones eval.py and train.py look up). Videos are found by name under --video_dir,
searched recursively: a video file `<key>.<ext>` (mp4, avi, mkv, webm, ...) or a frame folder `<key>/`
of numbered images; `--video_map` (JSON {key: path} or a two-column csv key,path; paths relative to
--video_dir, extension optional) names them where names differ. A key found nowhere, or found twice,
becomes a failure of its own, never a guess.

MVBench (its 20 tasks, the official `json/<task>.json` files and `video/<folder>/` layout) and the
captioning sets (MSR-VTT test, VATEX val) are read by the evaluation's readers too
(`dataloader.mvbench`, `dataloader.captioning`).
"""
import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

from dataloader import benchmarks, captioning, mvbench
from dataloader.base import load_json
from dataloader.mvbench import MVBENCH_TASKS
from util.errors import ConfigError, DataError, MissingFileError

from .frames import FOLDER_FPS, IMAGE_EXTS, VIDEO_EXTS, Rule, Segments



@dataclass
class Job:
    """One video to decode once, for one or more feature keys."""
    path: Optional[str]                   # a video file or a frame folder; None when not found
    wants: List[Tuple[str, Rule]]         # (feature key, sampling rule)
    problem: Optional[str] = None         # why the video cannot be read at all (missing, ambiguous, ...)
    folder_fps: Fraction = Fraction(FOLDER_FPS)
    bad_keys: Dict[str, str] = field(default_factory=dict)  # key -> reason known before decoding

    @property
    def keys(self) -> List[str]:
        return [k for k, _ in self.wants]


# ---- finding videos by name ----

class VideoIndex:
    """Every video file (by file stem) and frame folder (a folder holding images and no videos, by
    folder name) under `root`, searched recursively."""

    def __init__(self, root: str):
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise MissingFileError(f"--video_dir {self.root}: no such folder")
        self.by_name: Dict[str, List[str]] = defaultdict(list)
        self._walk(self.root, ())

    def _walk(self, folder: str, above: Tuple[Tuple[int, int], ...]):
        """`above`: (device, inode) of the folders from the root down to `folder`'s parent; a folder
        (reached through a symbolic link) that is one of them is a loop, an error naming the link."""
        try:
            st = os.stat(folder)
            entries = list(os.scandir(folder))
        except OSError as e:
            raise ConfigError(f"--video_dir {self.root}: cannot list {folder}: {e.strerror or e}") from None
        if (st.st_dev, st.st_ino) in above:
            raise ConfigError(f"--video_dir {self.root}: {folder} is a symbolic link to "
                              f"{os.path.realpath(folder)}, a folder above it (a loop); remove the link")
        above = above + ((st.st_dev, st.st_ino),)
        has_images = has_videos = False
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith("."):   # hidden files (e.g. macOS "._clip.mp4") are not videos
                continue
            if e.is_dir():
                self._walk(e.path, above)
                continue
            stem, ext = os.path.splitext(e.name)
            ext = ext.lower()
            if ext in VIDEO_EXTS:
                has_videos = True
                self.by_name[stem].append(e.path)
            elif ext in IMAGE_EXTS:
                has_images = True
        if has_images and not has_videos and folder != self.root:
            self.by_name[os.path.basename(folder)].append(folder)

    def names(self) -> List[str]:
        return sorted(self.by_name)

    def find(self, key: str) -> Tuple[Optional[str], Optional[str]]:
        """(path, None) or (None, why not)."""
        paths = self.by_name.get(key, [])
        if len(paths) == 1:
            return paths[0], None
        if not paths:
            return None, f"missing: no video file or frame folder named '{key}' under {self.root}"
        return None, (f"ambiguous: {len(paths)} videos named '{key}' under {self.root}: "
                      f"{', '.join(sorted(paths)[:3])} (name one with --video_map)")


def read_video_map(path: str, video_dir: Optional[str]) -> Dict[str, str]:
    """{key: path} from JSON ({key: path}) or csv (key,path rows; a header row is allowed). Relative
    paths are taken under `video_dir`; a path without extension gets the first that exists."""
    if path.endswith(".json"):
        raw = load_json(path)
        if not isinstance(raw, dict):
            raise DataError(f"--video_map {path}: expected a JSON object key -> video path")
        pairs = [(str(k), str(v)) for k, v in raw.items()]
    else:
        if not os.path.isfile(path):
            raise MissingFileError(f"--video_map {path}: no such file")
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
        bad = [i for i, r in enumerate(rows, 1) if len(r) != 2]
        if bad:
            raise DataError(f"--video_map {path}:{bad[0]}: expected two columns key,path")
        pairs = [(k.strip(), v.strip()) for k, v in rows]
        if pairs and pairs[0][0] in ("key", "video", "video_id", "vid", "uid"):
            pairs = pairs[1:]
    out = {}
    for k, v in pairs:
        p = v if os.path.isabs(v) or not video_dir else os.path.join(video_dir, v)
        if not os.path.exists(p) and not os.path.splitext(p)[1]:
            p = next((p + e for e in VIDEO_EXTS if os.path.isfile(p + e)), p)
        out[k] = p
    return out


class Resolver:
    """key -> video path: --video_map first, then the --video_dir index."""

    def __init__(self, video_dir: Optional[str], video_map: Optional[str] = None):
        self.map = read_video_map(video_map, video_dir) if video_map else {}
        self.index = VideoIndex(video_dir) if video_dir else None
        if self.index is None and not self.map:
            raise ConfigError("give --video_dir (and/or --video_map) to say where the videos are")

    def find(self, key: str) -> Tuple[Optional[str], Optional[str]]:
        if key in self.map:
            p = self.map[key]
            return (p, None) if os.path.exists(p) else (None, f"missing: {p} (from --video_map) does not exist")
        if self.index is None:
            return None, f"missing: '{key}' is not in --video_map"
        return self.index.find(key)


def jobs_for_keys(keys: Sequence[str], resolver: Resolver, rule: Rule, folder_fps=FOLDER_FPS) -> List[Job]:
    """One job per key (duplicates dropped, first order kept), every key sampled with `rule`."""
    jobs, seen = [], set()
    for k in keys:
        if k in seen:
            continue
        seen.add(k)
        path, problem = resolver.find(k)
        jobs.append(Job(path, [(k, rule)], problem, Fraction(folder_fps)))
    return jobs


# ---- multiple-choice benchmarks: keys from the annotation readers ----

def annotation_keys(dataset: str, data_root: str, splits: Optional[Sequence[str]] = None) -> List[str]:
    """Video keys of every question of the given splits (default: each split of the benchmark table whose
    annotations exist), in file order. Missing annotation files are an error when splits are named,
    skipped otherwise."""
    bench = benchmarks.get(dataset)
    keys, found = [], []
    for split in splits or bench.splits:
        try:
            records = bench.read(data_root, split, False)
        except FileNotFoundError:
            if splits:
                raise
            continue
        found.append(split)
        keys += [r.vid for r in records]
    if not found:
        raise MissingFileError(f"{dataset}: no annotations for any of the splits {', '.join(bench.splits)} "
                               f"under --data_root {data_root} (see docs/extraction.md for the layout)")
    return keys


# ---- MVBench ----

def mvbench_jobs(root: str, tasks: Optional[Sequence[str]] = None) -> Tuple[List[Job], List[str]]:
    """Jobs for MVBench: key "<json stem>/<item index>", the benchmark table's 10 frames by MVBench's
    window rule; questions on the same video share one job (one decoding). `tasks`: json stems or task
    names (default all 20). The task files are read by the evaluation's reader (`dataloader.mvbench`).
    Returns (jobs, every key in question order)."""
    n = int(benchmarks.get("mvbench").frames.n)
    by_stem = {v[0]: name for name, v in MVBENCH_TASKS.items()}
    chosen = list(by_stem)
    if tasks:
        names = {n.lower(): v[0] for n, v in MVBENCH_TASKS.items()}
        chosen = []
        for t in tasks:
            stem = t if t in by_stem else names.get(t.lower())
            if stem is None:
                raise ConfigError(f"--tasks: unknown MVBench task {t!r} (one of {', '.join(by_stem)})")
            chosen.append(stem)
    jobs: Dict[str, Job] = {}
    order: List[Job] = []
    keys: List[str] = []
    for stem in chosen:
        name = by_stem[stem]
        _, folder, is_frames, bounded = MVBENCH_TASKS[name]
        path = os.path.join(root, "json", f"{stem}.json")
        if not os.path.isfile(path):
            raise MissingFileError(f"MVBench {name}: annotations not found: {path}")
        for r in mvbench.read_task(path, name, stem):
            keys.append(r.key)
            vpath = os.path.join(root, "video", folder, r.video)
            job = jobs.get(vpath)
            if job is None:
                problem = None
                if not (os.path.isdir(vpath) if is_frames else os.path.isfile(vpath)):
                    problem = f"missing: no {'frame folder' if is_frames else 'video file'} {vpath}"
                job = jobs[vpath] = Job(vpath, [], problem)
                order.append(job)
            rule = Segments(n)
            if bounded:
                if r.start is None or r.end is None:
                    job.bad_keys[r.key] = f"annotation {r.source}: {name} needs numeric 'start' and 'end'"
                else:
                    rule = Segments(n, r.start, r.end)
            job.wants.append((r.key, rule))
    return order, keys


# ---- captioning: MSR-VTT test, VATEX val ----

CAPTION_FILES = {ds: (ds, name) for ds, name in captioning.FILES.items()}


def caption_keys(dataset: str, path: str) -> List[str]:
    """The videos of an MSR-VTT / VATEX annotation file, in file order (read by the evaluation's reader)."""
    return [r.key for r in captioning.read_file(path, dataset, need_refs=False)]
