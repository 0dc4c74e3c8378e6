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

What each request does (engine/requests.py builds it, the inference core engine/infer.py runs it;
docs/prompts.md has the prompts):

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

`memory=` and `frames=` (a FRAME_RULES name) replace the protocol's in every request. A video file or
frame folder is decoded once for all three frame rules and its features are kept (video/features.py:
by path, mtime and size, a folder by its files' names, sizes and mtimes; touched ones by their content
digest) so that another question on it decodes nothing. One caller at a time: every public method
holds the instance's lock. The class is a facade: the checks at its edge (engine/edge.py), the feature
cache (video/features.py), the request kinds (engine/requests.py) and the inference core (engine/infer.py).
Every public method checks its requests first (engine/edge.py): a malformed one is one RequestError
naming the argument (and, in a batch, the request's index), before anything is decoded or computed.
"""
import os
import threading
from functools import cached_property, wraps
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from dataloader.base import fit_frames
from llama.build import context_length, load_tokenizer_for, load_topa
from llama.memory import load_memory, project_to_memory
from text.prompts import DEFAULT, PromptBuilder, PromptStyle
from text.protocols import MSRVTT, MVBENCH, letter_ids, masked_ids, prompt_ids
from util import dist
from util.errors import MissingFileError
from video.features import FRAME_RULES, Frames, VideoFeatureCache, VideoFeatures, frame_rules  # noqa: F401 (API)

from . import infer, requests as rq
from .config import QAConfig, add_api_args, memory_on  # noqa: F401 (QAConfig, add_api_args: the API's settings)
from .edge import RequestChecks
from .requests import KINDS, OPEN, Answer, Choice, LogLikelihood  # noqa: F401 (the API's result types)


def _locked(fn):
    @wraps(fn)
    def inner(self, *a, **kw):
        with self._lock:
            return fn(self, *a, **kw)
    return inner


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
        self.edge = RequestChecks(self.builder, context_length(self.cfg.model), FRAME_RULES)  # engine/edge.py
        self.warn = warn
        self._lock = threading.RLock()
        self._model = self._clip = self._memory = None
        self.videos = VideoFeatureCache(lambda: self.clip, self.T, self.cfg.frames_fps, self.cfg.cache_size,
                                        self.cfg.keep_images)
        self.stats = self.videos.stats   # videos decoded / answered from the cache

    @property
    @_locked
    def model(self):
        if self._model is None:
            dtype = dist.resolve_dtype(self.cfg.model.precision, self.device)
            self._model = load_topa(self.cfg.model, self.device, dtype, tokenizer=self.tok, resume=self.cfg.resume)[0]
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

    @_locked
    def features(self, video, fps: Optional[float] = None) -> VideoFeatures:
        """CLIP features of the frames each request kind picks (one decoding pass for all of them), with
        their positions and times; a video file or frame folder from the cache when it is unchanged
        (video/features.py). `fps`: the rate of a frame array (default frames_fps)."""
        return self.videos.features(self.edge.features(video, fps), fps)

    def _video(self, video, kind: str, memory: Optional[bool],
               frames: Optional[str] = None) -> Tuple[torch.Tensor, Optional[Frames]]:
        """The model's input [T, 768] on the device (fitted, projected per the protocol or `memory`) and
        the frames it came from (`frames`: a FRAME_RULES name instead of the protocol's)."""
        feats, picked = self.videos.rows(video, frames or KINDS[kind].rule)
        v = fit_frames(feats, self.T).to(self.device)
        if self.use_memory(kind, memory):
            self.check_memory(kind, memory)
            v = project_to_memory(v, self.memory_tensor())
        return v, picked

    @_locked
    def choose(self, video, question: str, options: Sequence[str], **kw) -> Choice:
        return self._one("choose", (video, question, options), kw)

    @_locked
    def choose_batch(self, requests: Sequence[Tuple[object, str, Sequence[str]]], memory: Optional[bool] = None,
                     frames: Optional[str] = None, style: PromptStyle = DEFAULT, *, _one=False) -> List[Choice]:
        """(video, question, options) per request -> a Choice each: eval.py's packed scoring. `memory`
        and `frames` (a FRAME_RULES name) replace the protocol's; `style` is a benchmark's wording."""
        requests = self.edge.choose(requests, memory=memory, frames=frames, style=style, one=_one)
        questions, picked = [], []
        for video, question, options in requests:
            v, f = self._video(video, "choose", memory, frames)
            questions.append(infer.Question(v, self.builder.mcqa_options(question, list(options), style=style)))
            picked.append(f)
        scored = infer.score_all(self.model, questions, batch_size=self.cfg.batch_size, device=self.device)
        return [rq.choice(i, s, list(r[2]), f) for i, (s, r, f) in enumerate(zip(scored, requests, picked))]

    @_locked
    def describe(self, video, **kw) -> Answer:
        return self._one("describe", video, kw)

    @_locked
    def describe_batch(self, videos: Sequence, memory: Optional[bool] = None, frames: Optional[str] = None,
                       max_new_tokens: Optional[int] = None, *, _one=False) -> List[Answer]:
        """MSR-VTT's captioning prompt: "... Answer: It is a video of" + greedy tokens, first sentence."""
        videos = self.edge.describe(videos, memory=memory, frames=frames, max_new_tokens=max_new_tokens, one=_one)
        new = max_new_tokens or MSRVTT.max_new_tokens
        reqs = [self._prompt(v, "describe", memory, frames, MSRVTT.p1, MSRVTT.p2) for v in videos]
        return self._answers(reqs, rq.decoding(MSRVTT, new, self._masked), MSRVTT.cut)

    @_locked
    def answer(self, video, question: str, **kw) -> Answer:
        return self._one("answer", (video, question), kw)

    @_locked
    def answer_batch(self, requests: Sequence[Tuple[object, str]], memory: Optional[bool] = None,
                     frames: Optional[str] = None, max_new_tokens: Optional[int] = None, *,
                     _one=False) -> List[Answer]:
        """Open questions: MSR-VTT's instruction, "Question: Q\\nAnswer:", greedy to the end of the line."""
        requests = self.edge.answer(requests, memory=memory, frames=frames, max_new_tokens=max_new_tokens, one=_one)
        new, reqs = max_new_tokens or OPEN.max_new_tokens, []
        for video, question in requests:
            p2 = rq.open_p2(question)
            reqs.append(self._prompt(video, "answer", memory, frames, OPEN.p1, p2))
        return self._answers(reqs, rq.decoding(OPEN, new, until=("\n",)), OPEN.cut)

    @_locked
    def mvbench(self, video, question: str, options: Sequence[str], **kw) -> Answer:
        return self._one("mvbench", (video, question, options), kw)

    @_locked
    def mvbench_batch(self, requests: Sequence[Tuple[object, str, Sequence[str]]], memory: Optional[bool] = None,
                      frames: Optional[str] = None, max_new_tokens: Optional[int] = None, *,
                      _one=False) -> List[Answer]:
        """MVBench's letter protocol: the option whose letter ranks highest (among the given letters) at
        the first position after "The correct choice is ("; the free generation is kept beside it."""
        requests = self.edge.mvbench(requests, memory=memory, frames=frames, max_new_tokens=max_new_tokens, one=_one)
        new, reqs = max_new_tokens or MVBENCH.max_new_tokens, []
        for video, question, options in requests:
            p2 = rq.mvbench_p2(question, options)
            reqs.append(self._prompt(video, "mvbench", memory, frames, MVBENCH.p1, p2, len(options)))
        letters = letter_ids(self.tok, max((p.n_letters for p, _ in reqs), default=0))
        return self._answers(reqs, rq.decoding(MVBENCH, new, self._masked, letters), MVBENCH.cut)

    @_locked
    def complete(self, video, context: str, **kw) -> Answer:
        return self._one("complete", (video, context), kw)

    @_locked
    def complete_batch(self, requests: Sequence[Tuple[object, str]], until: Sequence[str] = (),
                       max_new_tokens: int = 32, memory: Optional[bool] = None, frames: Optional[str] = None,
                       p1: str = MSRVTT.p1, *, _one=False) -> List[Answer]:
        """Greedy continuation of `[BOS] p1 VIDEO×T context` (no mask), cut at the first `until` string."""
        requests, until = self.edge.complete(requests, until, max_new_tokens, memory=memory, frames=frames, p1=p1,
                                             one=_one)
        reqs = [self._prompt(v, "complete", memory, frames, p1, ctx) for v, ctx in requests]
        return self._answers(reqs, infer.Decoding(max_new_tokens, until=tuple(until)), lambda s: s)

    def _one(self, kind: str, request, kw: dict):
        """A single request, answered by the batched form (`_one`: its refusal names no index)."""
        return getattr(self, f"{kind}_batch")([request], _one=True, **kw)[0]

    def _prompt(self, video, kind, memory, frames, p1, p2, n_letters: int = 0):
        """(the core's Prompt, the frames it saw)."""
        v, picked = self._video(video, kind, memory, frames)
        return infer.Prompt(prompt_ids(self.tok, p1, p2, self.T), v, n_letters), picked

    def _answers(self, reqs, decoding: infer.Decoding, cut) -> List[Answer]:
        gens = infer.generate_all(self.model, self.tok, [p for p, _ in reqs], decoding, batch_size=self.cfg.batch_size)
        return [rq.answer(g, cut, f, p.n_letters) for g, (p, f) in zip(gens, reqs)]

    @cached_property
    def _masked(self) -> List[int]:
        return masked_ids(self.tok, warn=self.warn)

    @_locked
    def loglikelihood(self, video, context: str, continuation: str, **kw) -> LogLikelihood:
        return self._one("loglikelihood", (video, context, continuation), kw)

    @_locked
    def loglikelihood_batch(self, requests: Sequence[Tuple[object, str, str]], memory: Optional[bool] = None,
                            frames: Optional[str] = None, p1: str = MSRVTT.p1,
                            with_greedy: bool = False, *, _one=False) -> List[LogLikelihood]:
        """NLL of each continuation's tokens after `[BOS] p1 VIDEO×T context`. The continuation's tokens
        are those the encoding of context + continuation adds after the context's (lm-eval's split;
        spaces at the end of the context move to the continuation). `with_greedy` also says whether each
        continuation is the greedy one (read off the same forward pass)."""
        requests = self.edge.loglikelihood(requests, memory=memory, frames=frames, p1=p1, with_greedy=with_greedy,
                                           one=_one)
        questions = []
        for video, context, continuation in requests:
            seq = rq.continuation(self.tok, p1, context, continuation, self.T)
            questions.append(infer.Question(self._video(video, "loglikelihood", memory, frames)[0], [seq]))
        scored = infer.score_all(self.model, questions, batch_size=self.cfg.batch_size, device=self.device,
                                 scoring="full", greedy=with_greedy)
        return [rq.likelihood(i, s, len(q.seqs[0]) - q.seqs[0].span_start)
                for i, (s, q) in enumerate(zip(scored, questions))]
