"""The Python API's edge: every request to `TOPAVideoQA` (engine/api.py) is checked here, at the top of
each public method (single and batched forms), before anything is decoded, encoded or computed. A
request that breaks a rule is one `RequestError` (util/errors.py, a ValueError and a TypeError) naming
the argument, and in a batched call the request's index (`request 3: ...`); app.py shows that line
in the page and the lmms-eval plugin stops the run with it, so a refusal reads the same everywhere.

  text    question, options, context, continuation, p1 and the `until` strings are `str`. A question
          holds text; options are a list or tuple (never one string: it would be read letter by letter)
          of 2 to 26 distinct strings that hold text (ask.py's rule, `text.prompts.choice_problem`)
  video   a path (str or os.PathLike: a video file or a folder of numbered frames); RGB frames uint8
          [n, H, W, 3] (numpy or torch), or a list of [H, W, 3] uint8 arrays or PIL images, n >= 1;
          CLIP features [n, 768] (numpy or torch, floating point, finite, n >= 1); or what
          `features()` returned. A single image [H, W, 3], float frames and other integer frames are
          refused saying what to pass. Every request kind answers any video of one frame or more.
  flags   memory: True, False or None (the protocol's); frames: None or a FRAME_RULES name;
          max_new_tokens: an int >= 1 (None where the method's default is the protocol's); fps: None or
          a positive number; with_greedy: a bool; style: a PromptStyle
  length  the sequence the model runs (BOS, the instruction, the T video positions, the text, and the
          continuation or the new tokens) fits the backbone's context (`llama.build.context_length`:
          4096 positions for Llama-2, 8192 for Llama-3, config.json's max_position_embeddings, ...);
          else it is refused with its count and the limit (a question of 30,000 words took half a
          minute and gigabytes, or the kernel killed the process)
"""
import math
import numbers
import os
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from dataloader.base import FEATURE_DIM
from text.prompts import DEFAULT, PromptBuilder, PromptStyle, choice_problem, text_problem
from text.protocols import MSRVTT, MVBENCH, prompt_ids
from util.errors import RequestError
from video.features import VideoFeatures

from . import requests as rq

KINDS_OF_VIDEO = ("a path (a video file or a folder of numbered frames), uint8 RGB frames [n, H, W, 3], CLIP "
                  f"features [n, {FEATURE_DIM}], or what features() returned")


class RequestChecks:
    """The checks of one TOPAVideoQA's requests: its prompt builder (tokenizer, T), the backbone's context
    (positions) and the names of its frame rules. Each method takes the public method's arguments and
    returns its requests as the API reads them (options as lists, torch frames as numpy, numpy features
    as torch). The prompts are measured as engine/requests.py builds them."""

    def __init__(self, builder: PromptBuilder, context: int, frame_rules: Sequence[str]):
        self.builder, self.context, self.frame_rules = builder, context, tuple(frame_rules)
        self.tok, self.T = builder.tok, builder.T

    # ---- one per public method ----
    def choose(self, requests, memory=None, frames=None, style=DEFAULT, one=False) -> list:
        self._flags(memory=memory, frames=frames)
        if not isinstance(style, PromptStyle):
            raise RequestError(f"style must be a PromptStyle (text.prompts), not {type(style).__name__}")

        def check(video, question, options):
            options = self._choice(question, options)
            self._fits(len(self.builder.mcqa(question, options, 0, style=style)), 0, "the question or the options")
            return self.video(video), question, options
        return self._each(requests, ("video", "question", "options"), one, check)

    def mvbench(self, requests, memory=None, frames=None, max_new_tokens=None, one=False) -> list:
        new = self._flags(memory=memory, frames=frames, max_new_tokens=max_new_tokens) or MVBENCH.max_new_tokens

        def check(video, question, options):
            options = self._choice(question, options)
            p2 = rq.mvbench_p2(question, options)
            self._fits(len(prompt_ids(self.tok, MVBENCH.p1, p2, self.T)), new, "the question or the options")
            return self.video(video), question, options
        return self._each(requests, ("video", "question", "options"), one, check)

    def describe(self, videos, memory=None, frames=None, max_new_tokens=None, one=False) -> list:
        new = self._flags(memory=memory, frames=frames, max_new_tokens=max_new_tokens) or MSRVTT.max_new_tokens
        self._fits(len(prompt_ids(self.tok, MSRVTT.p1, MSRVTT.p2, self.T)), new, None)
        return self._each(videos, None, one, self.video)

    def answer(self, requests, memory=None, frames=None, max_new_tokens=None, one=False) -> list:
        new = self._flags(memory=memory, frames=frames, max_new_tokens=max_new_tokens) or rq.OPEN.max_new_tokens

        def check(video, question):
            self._text(question=question)
            problem = text_problem(question, [])
            if problem:
                raise RequestError(problem)
            self._fits(len(prompt_ids(self.tok, rq.OPEN.p1, rq.open_p2(question), self.T)), new, "the question")
            return self.video(video), question
        return self._each(requests, ("video", "question"), one, check)

    def complete(self, requests, until=(), max_new_tokens=32, memory=None, frames=None, p1=MSRVTT.p1,
                 one=False) -> tuple:
        """-> (requests, until as a tuple of strings): one string is one stop string."""
        new = self._flags(memory=memory, frames=frames, max_new_tokens=max_new_tokens, optional=False)
        self._text(p1=p1)
        until = (until,) if isinstance(until, str) else until
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) and u for u in until):
            raise RequestError(f"until must be a list of non-empty strings (or one string), not {until!r}")

        def check(video, context):
            self._text(context=context)
            self._fits(len(prompt_ids(self.tok, p1, context, self.T)), new, "the context")
            return self.video(video), context
        return self._each(requests, ("video", "context"), one, check), tuple(until)

    def loglikelihood(self, requests, memory=None, frames=None, p1=MSRVTT.p1, with_greedy=False, one=False) -> list:
        self._flags(memory=memory, frames=frames)
        self._text(p1=p1)
        if not isinstance(with_greedy, (bool, np.bool_)):
            raise RequestError(f"with_greedy must be True or False, not {with_greedy!r}")

        def check(video, context, continuation):
            self._text(context=context, continuation=continuation)
            self._fits(len(rq.continuation(self.tok, p1, context, continuation, self.T)), 0,
                       "the context or the continuation")
            return self.video(video), context, continuation
        return self._each(requests, ("video", "context", "continuation"), one, check)

    def features(self, video, fps=None):
        if fps is not None and not _number(fps, above=0):
            raise RequestError(f"fps must be a positive number (None: frames_fps), not {fps!r}")
        return self.video(video)

    @staticmethod
    def memory(memory):
        """`memory`: True, False or None (the protocol's); "no" would read as true."""
        if memory is not None and not isinstance(memory, (bool, np.bool_)):
            raise RequestError(f"memory must be True, False or None, not {memory!r}")

    # ---- the video ----
    def video(self, v):
        """`v` checked (module docstring), in the form the API reads it."""
        if isinstance(v, VideoFeatures):
            return v
        if isinstance(v, (str, os.PathLike)):
            path = os.fspath(v)
            if not isinstance(path, str) or not path:
                raise RequestError(f"video: {path!r} is not a path (a non-empty str)")
            return v
        if isinstance(v, np.ndarray) or torch.is_tensor(v):
            return _array(v)
        if isinstance(v, (list, tuple)):
            if not v:
                raise RequestError("video is an empty list of frames")
            return [_frame(f, k) for k, f in enumerate(v)]
        raise RequestError(f"video: {type(v).__name__} is not a video; pass {KINDS_OF_VIDEO}")

    # ---- helpers ----
    def _each(self, requests, names: Optional[tuple], one: bool, check: Callable) -> list:
        """`check` on every request (a tuple of `names`; None: the request is the video), the failure of
        request i as `request i: ...` (without the index for a single request)."""
        if not isinstance(requests, (list, tuple)):
            raise RequestError(f"the requests must be a list (or tuple), not {type(requests).__name__}: a "
                               "batched method takes one entry per request")
        out = []
        for i, r in enumerate(requests):
            try:
                if names is None:
                    out.append(check(r))
                    continue
                if not isinstance(r, (list, tuple)) or len(r) != len(names):
                    got = f"{len(r)} items" if isinstance(r, (list, tuple)) else type(r).__name__
                    raise RequestError(f"a request is ({', '.join(names)}), got {got}")
                out.append(check(*r))
            except RequestError as e:
                raise RequestError(str(e) if one else f"request {i}: {e}") from None
        return out

    def _flags(self, memory=None, frames=None, max_new_tokens=None, optional: bool = True) -> Optional[int]:
        """Checks the flags of a call; returns max_new_tokens."""
        self.memory(memory)
        if frames is not None and frames not in self.frame_rules:
            raise RequestError(f"frames must be one of {', '.join(self.frame_rules)} (or None: the protocol's), "
                               f"not {frames!r}")
        if (max_new_tokens is not None or not optional) and not _integer(max_new_tokens, low=1):
            default = " (None: the protocol's)" if optional else ""
            raise RequestError(f"max_new_tokens must be an integer >= 1{default}, not {max_new_tokens!r}")
        return None if max_new_tokens is None else int(max_new_tokens)

    @staticmethod
    def _text(**texts):
        for name, t in texts.items():
            if not isinstance(t, str):
                raise RequestError(f"{name} must be a str, not {type(t).__name__}")

    def _choice(self, question, options) -> List[str]:
        self._text(question=question)
        if isinstance(options, str):
            raise RequestError(f"options is one string ({_short(options)}): pass a list of strings (one string "
                               "would be read letter by letter)")
        if not isinstance(options, (list, tuple)):
            raise RequestError(f"options must be a list or tuple of str, not {type(options).__name__}")
        for k, o in enumerate(options):
            if not isinstance(o, str):
                raise RequestError(f"option {k} must be a str, not {type(o).__name__}")
        problem = choice_problem(question, options)
        if problem:
            raise RequestError(problem)
        return list(options)

    def _fits(self, n_prompt: int, new: int, text: Optional[str]):
        """The prompt and `new` generated tokens fit the backbone's context; else the error says to shorten
        `text` (or to lower max_new_tokens)."""
        if n_prompt + new <= self.context:
            return
        room = self.context - n_prompt
        fix = f"shorten {text}" if room < 1 or not new else \
            f"lower max_new_tokens to {room} or less" + (f", or shorten {text}" if text else "")
        with_new = f" + {new} new tokens = {n_prompt + new}" if new else ""
        raise RequestError(f"too long: the prompt is {n_prompt} tokens ({self.T} video positions included){with_new}, "
                           f"over the backbone's context of {self.context} positions; {fix}")


def _array(v):
    """An array or tensor video: features [n, 768] (-> torch) or frames [n, H, W, 3] uint8 (-> numpy)."""
    shape, dtype = list(v.shape), v.dtype
    is_torch = torch.is_tensor(v)
    floating = v.is_floating_point() if is_torch else np.issubdtype(dtype, np.floating)
    if len(shape) == 2:
        if shape[1] != FEATURE_DIM:
            raise RequestError(f"video features must be [n, {FEATURE_DIM}] (CLIP ViT-L/14 rows), got {shape}")
        if not floating:
            raise RequestError(f"video features must be floating point, got {dtype}")
        if shape[0] < 1:
            raise RequestError(f"video features {shape} hold no row")
        t = v if is_torch else torch.from_numpy(np.array(v))
        bad = (~torch.isfinite(t)).any(dim=1).nonzero()
        if len(bad):
            raise RequestError(f"video features: row {int(bad[0])} is not finite (NaN or Inf; {len(bad)} such rows): "
                               "the features passed in are broken")
        return t
    if len(shape) == 3 and shape[-1] == 3:
        how = "image.unsqueeze(0)" if is_torch else "image[None]"
        raise RequestError(f"video is a single image {shape}: a video is frames [n, H, W, 3]; pass {how} for a "
                           "one-frame video")
    if len(shape) != 4 or shape[-1] != 3:
        raise RequestError(f"video: an array of shape {shape} is neither RGB frames [n, H, W, 3] (channels last) "
                           f"nor CLIP features [n, {FEATURE_DIM}]")
    if min(shape[:3]) < 1:
        raise RequestError(f"video frames {shape} hold no pixel" if shape[0] else f"video frames {shape} hold no frame")
    _uint8(dtype, floating, is_torch, "video frames are")
    return v.cpu().numpy() if is_torch else v


def _frame(f, k: int):
    """Frame k of a list: a PIL image or an [H, W, 3] uint8 array (torch -> numpy)."""
    from PIL import Image
    if isinstance(f, Image.Image):
        if min(f.size) < 1:
            raise RequestError(f"video frame {k} is an empty image")
        return f
    if not (isinstance(f, np.ndarray) or torch.is_tensor(f)):
        raise RequestError(f"video frame {k} is {type(f).__name__}: a list holds frames (PIL images or uint8 "
                           "arrays [H, W, 3]); a video path is passed alone")
    shape = list(f.shape)
    if len(shape) != 3 or shape[-1] != 3 or min(shape) < 1:
        raise RequestError(f"video frame {k} must be an RGB image [H, W, 3], got {shape}")
    is_torch = torch.is_tensor(f)
    _uint8(f.dtype, f.is_floating_point() if is_torch else np.issubdtype(f.dtype, np.floating), is_torch,
           f"video frame {k} is")
    return f.cpu().numpy() if is_torch else f


def _uint8(dtype, floating: bool, is_torch: bool, what: str):
    if dtype == (torch.uint8 if is_torch else np.uint8):
        return
    if floating:
        cast = "(frames * 255).round().to(torch.uint8)" if is_torch else "(frames * 255).round().astype(np.uint8)"
        raise RequestError(f"{what} {dtype}: pass uint8 RGB values 0..255 (for values in 0..1: {cast})")
    cast = "frames.to(torch.uint8)" if is_torch else "frames.astype(np.uint8)"
    raise RequestError(f"{what} {dtype}: pass uint8 RGB values 0..255 ({cast} once every value is in 0..255)")


def _integer(v, low: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= low


def _number(v, above: float) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) and v > above


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n - 3] + "..."
