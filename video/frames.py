"""Frames of a video file or a frame folder, picked by a sampling rule.

Frame numbering (what every rule's indices mean):
  * video file: position in the decoder's output (presentation order), 0-based. Every frame is decoded,
    nothing is seeked, so index k is always the k-th frame the decoder gives. `fps` is the video
    stream's average rate (exact, a Fraction). The frame count is the decoded count, never the
    container's claim (.mkv/.webm report none; edit lists can make .mp4's differ).
  * frame folder: image files named by their frame number (`00001.jpg`, `00002.jpg`, ..., the TVQA
    frames layout): numbers must run 1..n without gaps; position k is the file numbered k+1; `fps` is
    given by the caller (TVQA's frames are 3 fps).

Rules (each returns 0-based positions, one per feature row, in row order):
  * FixedRate(F): row j is frame round(j*fps/F), j = 0, 1, ... while that index < n. Exact rational
    arithmetic on the stream's average rate, ties rounded half up (as ffmpeg's fps filter does): at
    25 fps and F = 2, row 1 is frame 13 (12.5 rounded up). Needs n >= 1.
  * Segments(N, start, end): MVBench's published rule, frame numbers counted from `first` (0 for video
    files, 1 for frame folders): a = max(first, round(start*fps)), b = min(round(end*fps), last) with
    last = first + n - 1; seg = (b - a)/N; idx_i = int(a + seg/2 + round(seg*i)), rounding half to
    even (numpy's). No bounds = (-100000, 100000), the whole video. a > b (window after the end) is a
    failure. With `min_frames`, fewer frames than that is a failure (used for --num_frames).
  * Strided(N): frame i*(n // N), i = 0..N-1 (MSR-VTT, VATEX). Needs n >= N; with `repeat` (the Python
    API, which answers any video of one frame or more) fewer frames give frame floor(i*n/N).

Frames are handed to `transform` (e.g. CLIP's preprocessing) as soon as they are decoded, and only the
frames some rule asks for are converted and kept, so a long video costs memory for its kept frames only.
"""
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from dataloader import tvqa

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
NO_BOUNDS = (-100000.0, 100000.0)  # MVBench's "whole video"
FOLDER_FPS = tvqa.FPS  # frame folders' default rate: TVQA's (and MVBench Episodic Reasoning's) frames


class VideoError(Exception):
    """A video (or one of its windows) that cannot give the frames asked for; the message is one line
    that says why (missing, unreadable, empty, too short, ...)."""


def as_fraction(x) -> Fraction:
    """Exact rate: Fractions stay, floats/strings go through their decimal text (29.97 -> 2997/100)."""
    return x if isinstance(x, Fraction) else Fraction(str(x))


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


# ---- sampling rules ----

def check_count(n: int, needed: int = 1):
    """VideoError unless a video of `n` frames has the `needed` frames a rule needs (and at least one)."""
    if n < 1:
        raise VideoError("empty: no frames")
    if n < needed:
        raise VideoError(f"too short: {n} frames, {needed} needed")


@dataclass(frozen=True)
class FixedRate:
    """Row j = frame round_half_up(j*fps/rate) while < n (see the module docstring)."""
    rate: Fraction
    needs_count = False

    def indices(self, n: int, fps: Optional[Fraction], first: int = 0) -> List[int]:
        check_count(n)
        step = self._step(fps)
        out, j = [], 0
        while True:
            i = round_half_up(j * step)
            if i >= n:
                return out
            out.append(i)
            j += 1

    def wants(self, i: int, fps: Optional[Fraction]) -> bool:
        """Whether frame i is some row's frame, without knowing n (for a single decoding pass)."""
        step = self._step(fps)
        # round_half_up(j*step) == i  <=>  i - 1/2 <= j*step < i + 1/2
        j = math.ceil((i - Fraction(1, 2)) / step)
        return j * step < i + Fraction(1, 2)

    def _step(self, fps) -> Fraction:
        if not fps or fps <= 0:
            raise VideoError("no frame rate: the video stream reports no average rate")
        return as_fraction(fps) / self.rate


@dataclass(frozen=True)
class Segments:
    """MVBench's window rule (see the module docstring)."""
    num: int = 10
    start: float = NO_BOUNDS[0]
    end: float = NO_BOUNDS[1]
    min_frames: int = 1
    needs_count = True

    def indices(self, n: int, fps: Optional[Fraction], first: int = 0) -> List[int]:
        check_count(n, self.min_frames)
        bounded = (self.start, self.end) != NO_BOUNDS
        if bounded and (not fps or fps <= 0):
            raise VideoError("no frame rate: the video stream reports no average rate")
        f = float(fps) if fps else 1.0   # unbounded: (+-100000)*f only needs to pass the clamps
        last = first + n - 1
        a = max(first, int(np.round(self.start * f)))
        b = min(int(np.round(self.end * f)), last)
        if a > b:
            raise VideoError(f"window {self.start}..{self.end} s starts after the video ends "
                             f"({n} frames at {float(fps):g} fps)")
        seg = (b - a) / self.num
        return [int(a + seg / 2 + np.round(seg * i)) - first for i in range(self.num)]


@dataclass(frozen=True)
class Strided:
    """Frame i*(n // num), i = 0..num-1 (MSR-VTT and VATEX captioning); with `repeat`, a video of fewer
    frames gives frame floor(i*n/num) (each frame repeated, in order) instead of failing."""
    num: int = 10
    repeat: bool = False
    needs_count = True

    def indices(self, n: int, fps: Optional[Fraction], first: int = 0) -> List[int]:
        if self.repeat and 1 <= n < self.num:
            return [i * n // self.num for i in range(self.num)]
        check_count(n, self.num)
        return [i * (n // self.num) for i in range(self.num)]


Rule = Union[FixedRate, Segments, Strided]
Transform = Callable[[object], np.ndarray]  # a PIL image -> what is kept of the frame
Outcome = Union[Tuple[List[int], np.ndarray], VideoError]  # (positions, frames [rows, ...]) or why not


# ---- frame folders ----

_NUMBERED = re.compile(r"^(\d+)$")


def list_frame_folder(folder: str) -> List[str]:
    """The image files of a frame folder in frame order; VideoError if names are not frame numbers
    1..n without gaps."""
    try:
        names = [e.name for e in os.scandir(folder)
                 if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS]
    except OSError as e:
        raise VideoError(f"unreadable frame folder: {e}") from None
    numbered = {}
    for name in names:
        m = _NUMBERED.match(os.path.splitext(name)[0])
        if not m:
            raise VideoError(f"frame folder holds '{name}', not named by a frame number (00001.jpg, ...)")
        k = int(m.group(1))
        if k in numbered:
            raise VideoError(f"frame folder has two files for frame {k}: {numbered[k]}, {name}")
        numbered[k] = name
    if not numbered:
        raise VideoError("empty: frame folder has no .jpg/.png frames")
    n = len(numbered)
    missing = [k for k in range(1, n + 1) if k not in numbered]
    if missing:
        raise VideoError(f"frame folder numbering is not 1..{n}: frame {missing[0]} is missing "
                         f"(numbers run {min(numbered)}..{max(numbered)})")
    return [os.path.join(folder, numbered[k]) for k in range(1, n + 1)]


def _load_image(path: str):
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise VideoError(f"unreadable frame {os.path.basename(path)}: {e}") from None


# ---- video files ----

def _open(path: str):
    import av
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"unreadable: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("unreadable: no video stream")
    return container


def _stream_fps(stream) -> Optional[Fraction]:
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else None


def video_fps(path: str) -> Optional[Fraction]:
    """The frame rate a video file's stream reports (None when it reports none); VideoError if unreadable."""
    container = _open(path)
    try:
        return _stream_fps(container.streams.video[0])
    finally:
        container.close()


def _count_packets(path: str) -> int:
    """Video packets in the file (demuxing only, no decoding): a cheap first guess of the frame count."""
    import av
    container = _open(path)
    try:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)
    except av.error.FFmpegError as e:
        raise VideoError(f"unreadable: {e}") from None
    finally:
        container.close()


def _decode(path: str, want: Callable[[int], bool], transform: Transform) -> Tuple[Dict[int, np.ndarray], int]:
    """One pass over every frame in decoder output order: {position: transform(frame)} for the wanted
    positions, and the decoded frame count."""
    import av
    container = _open(path)
    kept, n = {}, 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # threaded decoding; output order is unchanged
        for frame in container.decode(stream):
            if want(n):
                kept[n] = transform(frame.to_image())
            n += 1
    except av.error.FFmpegError as e:
        raise VideoError(f"unreadable after {n} frames: {e}") from None
    finally:
        container.close()
    return kept, n


def read_video(path: str, rules: Sequence[Rule], transform: Transform) -> List[Outcome]:
    """Per rule, (positions, stacked transformed frames) or the VideoError saying why not. A file that
    cannot be opened or decoded raises VideoError (it fails every rule).

    Rules that need the frame count are planned on a first guess (the container's count, or the video
    packets counted by demuxing) and checked against the decoded count; a wrong guess costs a second
    decoding pass, never a wrong frame."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps, reported = _stream_fps(stream), int(stream.frames or 0)
    finally:
        container.close()
    counted = [r for r in rules if r.needs_count]
    fixed = [r for r in rules if not r.needs_count]

    def plan(n_guess: Optional[int]) -> Set[int]:
        wanted = set()
        for r in counted:
            try:
                wanted.update(r.indices(n_guess, fps))
            except VideoError:
                pass
        return wanted

    guess = (reported or _count_packets(path)) if counted else None
    planned = plan(guess) if counted else set()
    fixed_ok = fixed if fps else []  # without a rate they fail below, in _pick
    kept, n = _decode(path, lambda i: i in planned or any(r.wants(i, fps) for r in fixed_ok), transform)
    if counted and n != guess:
        need = plan(n) - set(kept)
        if need:  # the guess was off and frames are missing: decode again, knowing n
            more, n2 = _decode(path, lambda i: i in need, transform)
            if n2 != n:
                raise VideoError(f"unreadable: decoding gave {n} frames, then {n2}")
            kept.update(more)
    return [_pick(r, n, fps, 0, kept) for r in rules]


def read_frame_folder(folder: str, rules: Sequence[Rule], transform: Transform, fps) -> List[Outcome]:
    """Like read_video for a folder of numbered frames at `fps` (only the images a rule needs are read)."""
    files = list_frame_folder(folder)
    n, fps = len(files), as_fraction(fps)
    outcomes: List[Outcome] = []
    cache: Dict[int, np.ndarray] = {}
    for r in rules:
        try:
            idx = r.indices(n, fps, first=1)
        except VideoError as e:
            outcomes.append(e)
            continue
        for i in idx:
            if i not in cache:
                cache[i] = transform(_load_image(files[i]))
        outcomes.append(_pick(r, n, fps, 1, cache))
    return outcomes


def _pick(rule: Rule, n: int, fps, first: int, kept: Dict[int, np.ndarray]) -> Outcome:
    try:
        idx = rule.indices(n, fps, first)
    except VideoError as e:
        return e
    absent = [i for i in idx if i not in kept]
    if absent:  # cannot happen unless a rule is inconsistent: never fill the gap
        return VideoError(f"internal: frames {absent[:3]} were not decoded")
    return idx, np.stack([kept[i] for i in idx])  # [rows, *frame shape]


def read_frames(path: str, rules: Sequence[Rule], transform: Transform, folder_fps=FOLDER_FPS) -> List[Outcome]:
    """A video file or a frame folder (`folder_fps` frames per second); missing paths are a VideoError."""
    if os.path.isdir(path):
        return read_frame_folder(path, rules, transform, folder_fps)
    if not os.path.isfile(path):
        raise VideoError("missing: no such file")
    return read_video(path, rules, transform)
