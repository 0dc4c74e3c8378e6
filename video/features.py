"""CLIP features of one video as the Python API's requests see them (engine/api.py): the frame rules,
what one rule picked (`Frames`), every rule's pick of a video (`VideoFeatures`), and the cache of decoded
videos (`VideoFeatureCache`).

  frame rules    `frame_rules(T)`, by name (FRAME_RULES): "fps1" = the rows eval.py fits from features
                 extracted at 1 frame/s (NExT-QA, EgoSchema: `FittedRate`), "segments" = MVBench's T
                 segments, "strided" = frames i*(n//T) (MSR-VTT) (video/frames.py implements the rules)
  a video        a file, a folder of numbered frames (at `frames_fps`), or a sequence of RGB frames
                 [H, W, 3] (uint8 arrays or PIL images, at `fps`). Every rule's frames are decoded in one
                 pass, and the union of them is encoded by CLIP once
  the cache      files and frame folders, by real path and `frames_fps`: a hit when the file's (mtime,
                 size), or the folder's files' (name, size, mtime), are those of the entry; else when
                 their content digest is (a file touched, as Gradio does with the uploads it hands out
                 again). A frame rewritten in place is a miss whatever the folder's own mtime says.
                 Least recently used entries go beyond `cache_size`.

Nothing here knows the model: the engine fits and projects the rows (dataloader.base.fit_frames).
"""
import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from dataloader import benchmarks
from util.errors import DataError, MissingFileError

from .frames import FixedRate, Segments, Strided, VideoError, read_frames, video_fps

FRAME_RULES = {"segments": "MVBench's 10 segments", "strided": "frames i*(n//T) (MSR-VTT)",
               "fps1": "1 frame/s, the T rows eval.py fits (NExT-QA)"}


@dataclass(frozen=True)
class FittedRate:
    """The rows eval.py feeds from features extracted at `rate` frames/s: of the FixedRate rows, those
    `fit_frames` keeps (row floor(j*m/T) when m > T rows; all of them otherwise, padded with zeros later)."""
    rate: int
    num: int
    needs_count = True

    def indices(self, n: int, fps, first: int = 0) -> List[int]:
        rows = FixedRate(Fraction(self.rate)).indices(n, fps, first)
        m = len(rows)
        return [rows[math.floor(j * m / self.num)] for j in range(self.num)] if m > self.num else rows


def frame_rules(T: int) -> Dict[str, object]:
    """The frame rules of the request kinds, by name ("fps1": the NExT-QA features' rate)."""
    return {"fps1": FittedRate(benchmarks.get("nextqa").frames.n, T), "segments": Segments(T),
            "strided": Strided(T, repeat=True)}


@dataclass
class Frames:
    """The frames one rule picked: positions in the video (0-based), their times in seconds, the CLIP
    features [n, 768] (fp32, CPU) and the 224x224 crops CLIP saw (uint8 [n, 224, 224, 3])."""
    indices: List[int]
    times: List[float]
    features: torch.Tensor
    images: Optional[np.ndarray] = None


@dataclass
class VideoFeatures:
    """`features()`'s result: per rule name, its Frames or the reason it has none (too short, ...)."""
    source: str
    fps: Optional[float]
    rules: Dict[str, Union[Frames, Exception]]

    def frames(self, rule: str) -> Frames:
        got = self.rules[rule]
        if isinstance(got, Exception):
            raise DataError(f"{self.source}: {got}")
        return got


def array_outcomes(frames, rules, fps):
    """`read_frames` for an in-memory sequence of RGB frames (arrays [H, W, 3] or PIL images)."""
    from PIL import Image

    from .clip import preprocess
    n, kept, out = len(frames), {}, []
    for r in rules:
        try:
            idx = r.indices(n, Fraction(str(fps)))
        except VideoError as e:
            out.append(e)
            continue
        for i in idx:
            if i not in kept:
                f = frames[i]
                img = f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, dtype=np.uint8))
                kept[i] = preprocess(img)
        out.append((idx, np.stack([kept[i] for i in idx])))
    return out


# ---------------------------------------------------------------- the cache's keys

def _hash_file(h, path: str):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _digest(path: str) -> str:
    """The content digest of a file, or of a frame folder's files (names and bytes, in name order)."""
    h = hashlib.blake2b(digest_size=20)
    if not os.path.isdir(path):
        _hash_file(h, path)
        return h.hexdigest()
    for name, _, _ in _folder_files(path):
        h.update(name.encode() + b"\0")
        _hash_file(h, os.path.join(path, name))
    return h.hexdigest()


def _folder_files(path: str) -> List[Tuple[str, int, int]]:
    """(name, size, mtime_ns) of a folder's files, by name."""
    with os.scandir(path) as it:
        return sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())


def _stamp(path: str) -> Tuple[tuple, tuple]:
    """(the stamp that must be equal for a hit without reading, the part a content match needs equal):
    a file's ((mtime_ns, size), size); a folder's ((name, size, mtime_ns) of each file, (name, size) of each)."""
    if os.path.isdir(path):
        files = _folder_files(path)
        return tuple(files), tuple((n, s) for n, s, _ in files)
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size), (st.st_size,)


@dataclass
class _Cached:
    stamp: tuple           # _stamp()[0] when last seen
    sizes: tuple           # _stamp()[1]
    digest: str            # the content digest
    features: VideoFeatures


class VideoFeatureCache:
    """Videos -> VideoFeatures (module docstring). `clip`: returns the CLIP encoder (called on the first
    video that needs encoding); `stats` counts videos decoded and answered from the cache."""

    def __init__(self, clip: Callable[[], object], T: int, frames_fps: float, cache_size: int = 64,
                 keep_images: bool = True):
        self.clip, self.rules = clip, frame_rules(T)
        self.frames_fps, self.cache_size, self.keep_images = frames_fps, cache_size, keep_images
        self.stats = {"decoded": 0, "cache_hits": 0}
        self._cache: "OrderedDict[tuple, _Cached]" = OrderedDict()

    def features(self, video, fps: Optional[float] = None) -> VideoFeatures:
        """The VideoFeatures of a path (from the cache when it holds them) or of a frame sequence at `fps`
        (default frames_fps; never cached)."""
        if isinstance(video, VideoFeatures):
            return video
        if not isinstance(video, (str, os.PathLike)):
            fps = fps or self.frames_fps
            return self._encode("frames", fps, array_outcomes(video, list(self.rules.values()), fps))
        path = os.fspath(video)
        if not os.path.exists(path):
            raise MissingFileError(f"video not found: {path}")
        key = (os.path.realpath(path), self.frames_fps)
        stamp, sizes = _stamp(path)
        hit = self._cache.get(key)
        digest = _digest(path) if hit is not None and hit.stamp != stamp and hit.sizes == sizes else None
        if hit is not None and (hit.stamp == stamp or digest == hit.digest):
            hit.stamp = stamp
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit.features
        got = self._decode(path)
        if self.cache_size:
            self._cache[key] = _Cached(stamp, sizes, digest or _digest(path), got)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return got

    def rows(self, video, rule: str) -> Tuple[torch.Tensor, Optional[Frames]]:
        """(CLIP features [n, 768], the Frames they are) of `video` under frame rule `rule` (a FRAME_RULES
        name); a feature tensor [n, 768] is its own rows (no Frames)."""
        if torch.is_tensor(video):
            return video, None
        picked = self.features(video).frames(rule)
        return picked.features, picked

    def _decode(self, path: str) -> VideoFeatures:
        from .clip import preprocess
        folder = os.path.isdir(path)
        try:
            outcomes = read_frames(path, list(self.rules.values()), preprocess, folder_fps=self.frames_fps)
            fps = self.frames_fps if folder else video_fps(path)
        except VideoError as e:
            raise DataError(f"{path}: {e}") from None
        self.stats["decoded"] += 1
        return self._encode(path, float(fps) if fps else None, outcomes)

    def _encode(self, source: str, fps, outcomes) -> VideoFeatures:
        """Encode the union of the rules' frames once and hand each rule its rows."""
        kept = {}
        for o in outcomes:
            if not isinstance(o, Exception):
                kept.update(zip(o[0], o[1]))
        order = sorted(kept)
        feats = self.clip().images(torch.from_numpy(np.stack([kept[i] for i in order]))).cpu() if order else None
        row = {i: k for k, i in enumerate(order)}
        rules = {}
        for name, o in zip(self.rules, outcomes):
            if isinstance(o, Exception):
                rules[name] = o
                continue
            idx = list(o[0])
            rules[name] = Frames(idx, [i / fps if fps else float("nan") for i in idx],
                                 feats[[row[i] for i in idx]], o[1] if self.keep_images else None)
        return VideoFeatures(str(source), fps, rules)


__all__ = ["FRAME_RULES", "FittedRate", "Frames", "VideoFeatures", "VideoFeatureCache", "frame_rules",
           "array_outcomes"]
