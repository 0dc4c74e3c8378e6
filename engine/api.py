"""The Python API: one TOPA model loaded once, then asked about many videos (notebooks, app.py, ask.py,
the lmms-eval plugin).

    from engine.api import QAConfig, TOPAVideoQA
    from llama.build import ModelConfig
    qa = TOPAVideoQA(QAConfig(model=ModelConfig(llama_model_path="pretrained/llama2/", model="7B"),
                              resume="vqa_checkpoint/topa_llama2_7b.pth", memory_path="data/textvid/memory.pkl"))
    qa.choose("clip.mp4", "What is the man doing?", ["cooking", "dancing", "reading"])   # -> Choice
    qa.answer("clip.mp4", "Where are they?").text                                        # open question
    qa.describe("clip.mp4").text                                                         # MSR-VTT's prompt
    qa.mvbench("clip.mp4", "What is the man doing?", ["cooking", "dancing"]).choice       # letter protocol
    qa.loglikelihood("clip.mp4", "Question: ...\\nAnswer:", " cooking").mean              # NLL, for harnesses

`video` is a video file, a folder of numbered frames (at `frames_fps`), an array of RGB frames
[n, H, W, 3] (uint8, at `frames_fps`), the `VideoFeatures` that `features()` returned, or a tensor of
CLIP features [n, 768] (as eval.py reads them from feature files; fitted to T rows as eval.py does).
Every method has a batched form (`*_batch`: lists in, lists out, run on the device in batches of
`batch_size`).

What each request does (docs/prompts.md has the prompts):

  choose         frames: 1 frame/s (the NExT-QA / EgoSchema features), the T rows eval.py fits from
                 them; memory off (eval.py's default); every option's mean NLL over its span, shared
                 prefix once (eval.py's scoring); the argmin; probabilities softmax(-score)
  mvbench        MVBench's 10 segments; memory on; MVBench's prompt; the option of the letter ranked
                 highest after "The correct choice is ("
  describe       frames i*(n//T) (MSR-VTT); memory on; MSR-VTT's prompt, 10 greedy tokens, first sentence
  answer         frames i*(n//T); memory on; the open-QA prompt "Question: Q\\nAnswer:", up to 20
                 greedy tokens, to the end of the line
  loglikelihood  10 segments; memory on; `[BOS] P1 VIDEO×T context continuation`: the continuation's NLL
  complete       10 segments; memory on; a greedy continuation of `[BOS] P1 VIDEO×T context`

`memory=` and `frames=` (a FRAME_RULES name) replace the protocol's in every request. A video file is
decoded once for all three frame rules and its features are kept (by path, mtime and size; a touched
file by its content digest) so that another question on it decodes nothing. One caller at a time:
every public method holds the instance's lock.
Every public method checks its requests first (engine/edge.py): a malformed one is one RequestError
naming the argument (and, in a batch, the request's index), before anything is decoded or computed.
"""
import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from functools import wraps
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dataloader.base import EvalItem, QARecord, fit_frames
from dataloader.packing import ScoringCollate, collate_rows, single_row
from llama.build import context_length, load_tokenizer_for, load_topa
from llama.generation import Watch, greedy_generate, nonfinite_pick
from llama.memory import load_memory, project_to_memory
from text.prompts import DEFAULT, LETTERS, VIDEO, PromptBuilder, PromptStyle, Sequence as Seq, normalize_question
from text.protocols import (MSRVTT, MVBENCH, OPEN_NEW_TOKENS, OPEN_P2, choices_text, generated_text, letter_ids,
                            masked_ids, predicted_letter, prompt_ids)
from util import dist
from util.errors import ConfigError, DataError, MissingFileError, NonFiniteError

from .config import QAConfig, add_api_args, memory_on  # noqa: F401 (QAConfig, add_api_args: the API's settings)
from .edge import RequestChecks
from .losses import group_mean, token_nll
from .scoring import prediction_rows, score_batch

CHOOSE_FPS = 1  # NExT-QA / EgoSchema features: 1 frame per second (docs/extraction.md)


# ---------------------------------------------------------------- frames

@dataclass(frozen=True)
class FittedRate:
    """The rows eval.py feeds from features extracted at `rate` frames/s: of the FixedRate rows, those
    `fit_frames` keeps (row floor(j*m/T) when m > T rows; all of them otherwise, padded with zeros later)."""
    rate: int
    num: int
    needs_count = True

    def indices(self, n: int, fps, first: int = 0) -> List[int]:
        from video.frames import FixedRate
        rows = FixedRate(Fraction(self.rate)).indices(n, fps, first)
        m = len(rows)
        return [rows[math.floor(j * m / self.num)] for j in range(self.num)] if m > self.num else rows


FRAME_RULES = {"segments": "MVBench's 10 segments", "strided": "frames i*(n//T) (MSR-VTT)",
               "fps1": "1 frame/s, the T rows eval.py fits (NExT-QA)"}


def frame_rules(T: int) -> Dict[str, object]:
    """The frame rules of the request kinds, by name."""
    from video.frames import Segments, Strided
    return {"fps1": FittedRate(CHOOSE_FPS, T), "segments": Segments(T), "strided": Strided(T, repeat=True)}


@dataclass(frozen=True)
class Kind:
    rule: str        # frame_rules name
    memory: bool     # the protocol's memory projection


KINDS = {"choose": Kind("fps1", False), "mvbench": Kind("segments", MVBENCH.memory),
         "describe": Kind("strided", MSRVTT.memory), "answer": Kind("strided", MSRVTT.memory),
         "loglikelihood": Kind("segments", True), "complete": Kind("segments", True)}


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


def _video_fps(path: str) -> Optional[float]:
    from video.frames import video_fps
    fps = video_fps(path)
    return float(fps) if fps else None


def _array_outcomes(frames, rules, fps):
    """read_frames for an in-memory sequence of RGB frames (arrays [H, W, 3] or PIL images)."""
    from PIL import Image

    from video.clip import preprocess
    from video.frames import VideoError
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


# ---------------------------------------------------------------- results

@dataclass
class Choice:
    """`choose`: the option with the lowest score (mean NLL of its span), every option's score and
    softmax(-score)."""
    index: int
    option: str
    letter: str
    scores: List[float]
    probabilities: List[float]
    frames: Optional[Frames] = None


@dataclass
class Answer:
    """A generated answer: `text` (the protocol's reading of it), `generated` (the new text as it reads
    in context). MVBench's letter protocol also gives `choice` (option index), `letter` and
    `free_letter` (the letter the free generation names, None if it names none or another)."""
    text: str
    generated: str
    frames: Optional[Frames] = None
    choice: Optional[int] = None
    letter: Optional[str] = None
    free_letter: Optional[str] = None


@dataclass
class LogLikelihood:
    """NLL of a continuation's tokens: mean per token (TOPA's option score, lmms-eval's loss) and sum."""
    mean: float
    sum: float
    n_tokens: int
    greedy: Optional[bool] = None  # with_greedy: every continuation token is its position's argmax


@dataclass
class _Gen:
    """One generation request."""
    index: int
    prompt: List[int]
    video: torch.Tensor
    max_new_tokens: int
    mask: bool
    marker: str                           # answer = decoded text after it ("": the generated text)
    cut: Callable[[str], str]
    until: Tuple[str, ...] = ()
    n_letters: int = 0


@dataclass
class _Cached:
    stamp: Tuple[int, int]     # (mtime_ns, size) when last seen
    digest: Optional[str]      # the file's content digest (None: a frame folder)
    features: VideoFeatures


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _locked(fn):
    @wraps(fn)
    def inner(self, *a, **kw):
        with self._lock:
            return fn(self, *a, **kw)
    return inner


def _chunks(xs: list, n: int):
    return [xs[i:i + n] for i in range(0, len(xs), n)]


# ---------------------------------------------------------------- the API

class TOPAVideoQA:
    """A TOPA model, its tokenizer, the CLIP encoder and the text memory, loaded once (the tokenizer at
    once, the rest on first use or with `load()`). See the module docstring."""

    def __init__(self, cfg: Optional[QAConfig] = None, warn: Callable[[str], None] = print):
        self.cfg = cfg or QAConfig()
        self.T = self.cfg.model.max_feats
        self.device = dist.select_device(self.cfg.device)
        self.tok = load_tokenizer_for(self.cfg.model)
        self.builder = PromptBuilder(self.tok, self.T)
        self.edge = RequestChecks(self.tok, self.T, context_length(self.cfg.model), FRAME_RULES)  # engine/edge.py
        self.warn = warn
        self._lock = threading.RLock()
        self._model = self._clip = self._memory = None
        self._masked = None
        self._cache: "OrderedDict[tuple, _Cached]" = OrderedDict()
        self.stats = {"decoded": 0, "cache_hits": 0}   # videos decoded / answered from the cache

    # ---- what is loaded ----
    @property
    @_locked
    def model(self):
        if self._model is None:
            dtype = dist.resolve_dtype(self.cfg.model.precision, self.device)
            self._model, _, _ = load_topa(self.cfg.model, self.device, dtype, tokenizer=self.tok,
                                          resume=self.cfg.resume)
            self._model.eval()
            if self.cfg.resume is None:
                self.warn("warning: no --resume checkpoint: answering with freshly initialised TOPA parameters")
        return self._model

    @property
    @_locked
    def clip(self):
        if self._clip is None:
            from video.clip import ClipEncoder
            dtype = dist.resolve_dtype(None, self.device, gpu_default="fp16")  # as the published features
            self._clip = ClipEncoder(self.cfg.clip_model, self.device, dtype)
        return self._clip

    def check_memory(self, kind: str, memory: Optional[bool] = None):
        """MissingFileError now if `kind` would project onto a memory file that does not exist."""
        self.edge.memory(memory)
        if self.use_memory(kind, memory) and self._memory is None and not os.path.isfile(self.cfg.memory_path):
            raise MissingFileError(f"the memory projection needs {self.cfg.memory_path} (--memory_path; the TextVid "
                                   f"text feature memory): not found. --no_memory answers without it")

    def use_memory(self, kind: str, memory: Optional[bool] = None) -> bool:
        """The call's `memory`, else the config's, else the protocol's (`memory_on`)."""
        return memory_on(memory, self.cfg.memory, protocol=KINDS[kind].memory)

    @_locked
    def memory_tensor(self) -> torch.Tensor:
        if self._memory is None:
            self.check_memory("mvbench", True)
            self._memory = load_memory(self.cfg.memory_path).to(self.device)
        return self._memory

    @_locked
    def load(self, memory: bool = True) -> "TOPAVideoQA":
        """Load everything now (the model, CLIP, and the memory when `memory` and its file exists)."""
        self.edge.memory(memory)
        self.clip, self.model  # noqa: B018 (loads)
        if memory and os.path.isfile(self.cfg.memory_path):
            self.memory_tensor()
        return self

    # ---- video -> frames -> CLIP ----
    @_locked
    def features(self, video, fps: Optional[float] = None) -> VideoFeatures:
        """CLIP features of the frames each request kind picks (one decoding pass for all of them), with
        their positions and times. A video file or frame folder is answered from the cache when its path,
        mtime and size are unchanged, or (a file touched since, as Gradio does with the uploads it hands
        out again) when its size and content digest are. `fps`: the rate of a frame array (default
        frames_fps)."""
        video = self.edge.features(video, fps)
        if isinstance(video, VideoFeatures):
            return video
        if not isinstance(video, (str, os.PathLike)):
            fps = fps or self.cfg.frames_fps
            return self._encode("frames", fps, _array_outcomes(video, list(self._rules().values()), fps))
        path = os.fspath(video)
        if not os.path.exists(path):
            raise MissingFileError(f"video not found: {path}")
        key, st = (os.path.realpath(path), self.cfg.frames_fps), os.stat(path)
        stamp, hit = (st.st_mtime_ns, st.st_size), self._cache.get(key)
        if hit is not None and (hit.stamp == stamp or (hit.digest and hit.stamp[1] == st.st_size
                                                       and _digest(path) == hit.digest)):
            hit.stamp = stamp
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit.features
        got = self._decode(path)
        if self.cfg.cache_size:
            self._cache[key] = _Cached(stamp, None if os.path.isdir(path) else _digest(path), got)
            while len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)
        return got

    def _rules(self):
        return frame_rules(self.T)

    def _decode(self, path: str) -> VideoFeatures:
        from video.clip import preprocess
        from video.frames import VideoError, read_frames
        folder = os.path.isdir(path)
        try:
            outcomes = read_frames(path, list(self._rules().values()), preprocess, folder_fps=self.cfg.frames_fps)
            fps = self.cfg.frames_fps if folder else _video_fps(path)
        except VideoError as e:
            raise DataError(f"{path}: {e}") from None
        self.stats["decoded"] += 1
        return self._encode(path, fps, outcomes)

    def _encode(self, source: str, fps, outcomes) -> VideoFeatures:
        """Encode the union of the rules' frames once and hand each rule its rows."""
        kept = {}
        for o in outcomes:
            if not isinstance(o, Exception):
                kept.update(zip(o[0], o[1]))
        order = sorted(kept)
        feats = self.clip.images(torch.from_numpy(np.stack([kept[i] for i in order]))).cpu() if order else None
        row = {i: k for k, i in enumerate(order)}
        rules = {}
        for name, o in zip(self._rules(), outcomes):
            if isinstance(o, Exception):
                rules[name] = o
                continue
            idx = list(o[0])
            rules[name] = Frames(idx, [i / fps if fps else float("nan") for i in idx],
                                 feats[[row[i] for i in idx]], o[1] if self.cfg.keep_images else None)
        return VideoFeatures(str(source), fps, rules)

    def _video(self, video, kind: str, memory: Optional[bool],
               frames: Optional[str] = None) -> Tuple[torch.Tensor, Optional[Frames]]:
        """The model's input [T, 768] on the device (fitted, projected per the protocol or `memory`) and
        the frames it came from (`frames`: a frame_rules name instead of the protocol's)."""
        if torch.is_tensor(video):
            picked, feats = None, video
        else:
            picked = self.features(video).frames(frames or KINDS[kind].rule)
            feats = picked.features
        v = fit_frames(feats, self.T).to(self.device)
        if self.use_memory(kind, memory):
            self.check_memory(kind, memory)
            v = project_to_memory(v, self.memory_tensor())
        return v, picked

    # ---- multiple choice by scoring ----
    @_locked
    def choose(self, video, question: str, options: Sequence[str], **kw) -> Choice:
        self.edge.choose([(video, question, options)], one=True, **kw)
        return self.choose_batch([(video, question, options)], **kw)[0]

    @_locked
    def choose_batch(self, requests: Sequence[Tuple[object, str, Sequence[str]]], memory: Optional[bool] = None,
                     frames: Optional[str] = None, style: PromptStyle = DEFAULT) -> List[Choice]:
        """(video, question, options) per request -> a Choice each: eval.py's packed scoring. `memory`
        and `frames` (a FRAME_RULES name) replace the protocol's; `style` is a benchmark's wording."""
        requests = self.edge.choose(requests, memory=memory, frames=frames, style=style)
        items, picked = [], []
        for i, (video, question, options) in enumerate(requests):
            v, f = self._video(video, "choose", memory, frames)
            rec = QARecord(vid=str(i), qid=str(i), question=question, options=list(options), answer=None,
                           source="choose")
            items.append(EvalItem(i, rec, v, self.builder.mcqa_options(question, list(options), style=style)))
            picked.append(f)
        out = []
        for chunk in _chunks(items, self.cfg.batch_size):
            batch = ScoringCollate("packed")(chunk).to(self.device)
            rows, error = prediction_rows(batch, score_batch(self.model, batch))
            if error is not None:
                raise error
            for r in rows:
                sc, k = r["scores"], r["prediction"]
                p = torch.softmax(-torch.tensor(sc, dtype=torch.float64), 0).tolist()
                opts = items[r["index"]].record.options
                out.append(Choice(k, opts[k], LETTERS[k], sc, p, picked[r["index"]]))
        return out

    # ---- generation ----
    @_locked
    def describe(self, video, **kw) -> Answer:
        self.edge.describe([video], one=True, **kw)
        return self.describe_batch([video], **kw)[0]

    @_locked
    def describe_batch(self, videos: Sequence, memory: Optional[bool] = None, frames: Optional[str] = None,
                       max_new_tokens: Optional[int] = None) -> List[Answer]:
        """MSR-VTT's captioning prompt: "... Answer: It is a video of" + greedy tokens, first sentence."""
        videos = self.edge.describe(videos, memory=memory, frames=frames, max_new_tokens=max_new_tokens)
        p = MSRVTT
        new = max_new_tokens or p.max_new_tokens
        return self._generate([self._request(i, v, "describe", (memory, frames), p.p1, p.p2, new, p.mask, p.marker,
                                             p.cut) for i, v in enumerate(videos)])

    @_locked
    def answer(self, video, question: str, **kw) -> Answer:
        self.edge.answer([(video, question)], one=True, **kw)
        return self.answer_batch([(video, question)], **kw)[0]

    @_locked
    def answer_batch(self, requests: Sequence[Tuple[object, str]], memory: Optional[bool] = None,
                     frames: Optional[str] = None, max_new_tokens: Optional[int] = None) -> List[Answer]:
        """Open questions: MSR-VTT's instruction, "Question: Q\\nAnswer:", greedy to the end of the line."""
        requests = self.edge.answer(requests, memory=memory, frames=frames, max_new_tokens=max_new_tokens)
        out = []
        for i, (v, q) in enumerate(requests):
            p2 = OPEN_P2.format(question=normalize_question(q))
            out.append(self._request(i, v, "answer", (memory, frames), MSRVTT.p1, p2, max_new_tokens or OPEN_NEW_TOKENS,
                                     False, "Answer:", str.strip, until=("\n",)))
        return self._generate(out)

    @_locked
    def mvbench(self, video, question: str, options: Sequence[str], **kw) -> Answer:
        self.edge.mvbench([(video, question, options)], one=True, **kw)
        return self.mvbench_batch([(video, question, options)], **kw)[0]

    @_locked
    def mvbench_batch(self, requests: Sequence[Tuple[object, str, Sequence[str]]], memory: Optional[bool] = None,
                      frames: Optional[str] = None, max_new_tokens: Optional[int] = None) -> List[Answer]:
        """MVBench's letter protocol: the option whose letter ranks highest (among the given letters) at
        the first position after "The correct choice is ("; the free generation is kept beside it."""
        requests = self.edge.mvbench(requests, memory=memory, frames=frames, max_new_tokens=max_new_tokens)
        p, out = MVBENCH, []
        for i, (v, q, options) in enumerate(requests):
            p2 = p.p2_text(question=q, choices=choices_text(options))
            out.append(self._request(i, v, "mvbench", (memory, frames), p.p1, p2, max_new_tokens or p.max_new_tokens,
                                     p.mask, p.marker, p.cut, n_letters=len(options)))
        return self._generate(out)

    @_locked
    def complete(self, video, context: str, **kw) -> Answer:
        self.edge.complete([(video, context)], one=True, **kw)
        return self.complete_batch([(video, context)], **kw)[0]

    @_locked
    def complete_batch(self, requests: Sequence[Tuple[object, str]], until: Sequence[str] = (),
                       max_new_tokens: int = 32, memory: Optional[bool] = None, frames: Optional[str] = None,
                       p1: str = MSRVTT.p1) -> List[Answer]:
        """Greedy continuation of `[BOS] p1 VIDEO×T context` (no mask), cut at the first `until` string."""
        requests, until = self.edge.complete(requests, until, max_new_tokens, memory=memory, frames=frames, p1=p1)
        return self._generate([self._request(i, v, "complete", (memory, frames), p1, ctx, max_new_tokens, False, "",
                                             lambda s: s, until=tuple(until)) for i, (v, ctx) in enumerate(requests)])

    def _request(self, i, video, kind, how, p1, p2, max_new_tokens, mask, marker, cut, until=(), n_letters=0):
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        v, frames = self._video(video, kind, *how)
        g = _Gen(i, prompt_ids(self.tok, p1, p2, self.T), v, max_new_tokens, mask, marker, cut, until, n_letters)
        return g, frames

    def _generate(self, reqs: List[Tuple[_Gen, Optional[Frames]]]) -> List[Answer]:
        """Batches of requests that share a token budget and a mask, greedy from the KV cache."""
        out: List[Optional[Answer]] = [None] * len(reqs)
        groups: Dict[tuple, list] = {}
        for g, f in reqs:
            groups.setdefault((g.max_new_tokens, g.mask), []).append((g, f))
        for (max_new, mask), members in groups.items():
            for chunk in _chunks(members, self.cfg.batch_size):
                for (g, f), a in zip(chunk, self._generate_chunk([g for g, _ in chunk], max_new, mask)):
                    a.frames = f
                    out[g.index] = a
        return out

    def _masked_ids(self) -> List[int]:
        if self._masked is None:
            self._masked = masked_ids(self.tok, warn=self.warn)
        return self._masked

    def _generate_chunk(self, gens: List[_Gen], max_new: int, mask: bool) -> List[Answer]:
        tok, n_let = self.tok, max(g.n_letters for g in gens)
        letters = letter_ids(tok, n_let) if n_let else []
        watch = Watch(letters)
        stops = [(lambda ids, u=g.until: any(s in tok.decode(ids) for s in u)) if g.until else None for g in gens]
        ids = greedy_generate(self.model, [g.prompt for g in gens], torch.stack([g.video for g in gens]),
                              max_new_tokens=max_new, eos_id=tok.eos_id, masked_ids=self._masked_ids() if mask else (),
                              stop=stops, observe=watch)
        bad, first = watch.read()
        out = []
        for b, (g, gen) in enumerate(zip(gens, ids)):
            if nonfinite_pick(bad, b, gen):
                raise NonFiniteError("the model's next-token scores are not finite (its output overflowed or is "
                                     "NaN); check the checkpoint's tensors, or run with --precision fp32")
            after, text = generated_text(tok, g.prompt, gen, g.marker)
            for s in g.until:
                after = after.split(s)[0]
            a = Answer(g.cut(after), text)
            if g.n_letters:
                k = int(first[b, :g.n_letters].argmax())
                a.choice, a.letter, a.free_letter = k, LETTERS[k], predicted_letter(after, g.n_letters)
            out.append(a)
        return out

    # ---- likelihood (harnesses) ----
    @_locked
    def loglikelihood(self, video, context: str, continuation: str, **kw) -> LogLikelihood:
        self.edge.loglikelihood([(video, context, continuation)], one=True, **kw)
        return self.loglikelihood_batch([(video, context, continuation)], **kw)[0]

    @_locked
    def loglikelihood_batch(self, requests: Sequence[Tuple[object, str, str]], memory: Optional[bool] = None,
                            frames: Optional[str] = None, p1: str = MSRVTT.p1,
                            with_greedy: bool = False) -> List[LogLikelihood]:
        """NLL of each continuation's tokens after `[BOS] p1 VIDEO×T context`. The continuation's tokens
        are those the encoding of context + continuation adds after the context's (lm-eval's split;
        spaces at the end of the context move to the continuation). `with_greedy` also says whether each
        continuation is the greedy one (a second forward pass)."""
        requests = self.edge.loglikelihood(requests, memory=memory, frames=frames, p1=p1, with_greedy=with_greedy)
        seqs, videos = [], []
        for video, context, continuation in requests:
            ctx_text = context.rstrip(" ")
            cont_text = context[len(ctx_text):] + continuation
            prompt = prompt_ids(self.tok, p1, ctx_text, self.T)
            n_ctx = len(self.tok.encode(ctx_text))
            cont = self.tok.encode(ctx_text + cont_text)[n_ctx:]
            if not cont:
                raise ConfigError(f"the continuation {continuation!r} adds no token to the context")
            seqs.append(Seq(prompt + cont, prompt.index(VIDEO), len(prompt)))
            videos.append(self._video(video, "loglikelihood", memory, frames)[0])
        out = []
        for chunk in _chunks(list(range(len(seqs))), self.cfg.batch_size):
            batch = collate_rows([single_row(seqs[i]) for i in chunk], [videos[i] for i in chunk]).to(self.device)
            with torch.no_grad():
                nll = token_nll(self.model, batch, batch.video)
                mean = group_mean(nll, batch.t_group, batch.n_groups).cpu()
                greedy = self._greedy(batch) if with_greedy else [None] * len(chunk)
            for j, i in enumerate(chunk):
                n = len(seqs[i]) - seqs[i].span_start
                m = float(mean[j])
                if not math.isfinite(m):
                    raise NonFiniteError(f"request {i}: the continuation's NLL is not finite (the model's output "
                                         "overflowed or is NaN); try --precision fp32")
                out.append(LogLikelihood(m, m * n, n, None if greedy[j] is None else bool(greedy[j])))
        return out

    def _greedy(self, batch) -> torch.Tensor:
        """Per group, whether every scored token is its position's argmax."""
        h = self.model.hidden(batch.tokens, batch.positions, batch.mask, batch.video, batch.video_start)
        top = self.model.logits(h.flatten(0, 1)[batch.t_pred]).argmax(-1)[batch.t_inv]
        wrong = torch.zeros(batch.n_groups, device=top.device)
        wrong.index_add_(0, batch.t_group, (top != batch.t_tgt).float())
        return (wrong == 0).cpu()

