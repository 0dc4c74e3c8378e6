"""ask.py: one video file (or frame folder) -> frames -> CLIP ViT-L/14 image features -> TOPA -> an answer.

Three kinds of request, each with the prompt of a published protocol (text/protocols.py):

  --question Q --options O1 O2 ..   MVBench's prompt (10 frames spread over the video, as MVBench picks
                                    them; memory on; " how"/" How" masked). The answer is the option of
                                    the letter the model ranks highest after "The correct choice is (",
                                    among the given letters only; the two tokens it generates freely are
                                    shown too where they name another letter or none.
  --describe                        MSR-VTT's prompt ("... Answer: It is a video of"; frames i*(n//10);
                                    memory on; masked), 10 new tokens, cut at the first "."
  --question Q                      the open-QA prompt of pre-alignment ("Question: Q\\nAnswer:"), with
                                    MSR-VTT's instruction, frames and memory; up to 20 tokens, to the
                                    end of the line

`--memory` / `--no_memory` override the memory projection; `--max_new_tokens` the token budget. The
answer is the only line on stdout; warnings go to stderr.
"""
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from dataloader.base import fit_frames
from llama.build import ModelConfig, load_tokenizer_for, load_topa, resolve_dtype
from llama.generation import greedy_generate
from llama.memory import project_to_memory
from llama.memory import load_memory
from text.prompts import normalize_question
from text.protocols import (LETTERS, MSRVTT, MVBENCH, choices_text, generated_text, letter_ids, masked_ids,
                            predicted_letter, prompt_ids)
from util import dist
from util.errors import ConfigError, DataError, MissingFileError

OPEN_P2 = "\nQuestion: {question}\nAnswer:"
OPEN_NEW_TOKENS = 20


@dataclass
class AskConfig:
    video: str
    model: ModelConfig = field(default_factory=ModelConfig)
    question: Optional[str] = None
    options: List[str] = field(default_factory=list)
    describe: bool = False
    resume: Optional[str] = None          # the TOPA checkpoint
    clip_model: str = "openai/clip-vit-large-patch14"
    memory: Optional[bool] = None         # None: the protocol's (on)
    memory_path: str = "./data/textvid/memory.pkl"
    max_new_tokens: Optional[int] = None  # None: the protocol's
    frames_fps: float = 3.0               # frame folders
    device: str = "auto"

    def __post_init__(self):
        if self.describe == (self.question is not None):
            raise ConfigError("give either --question (with or without --options) or --describe")
        if self.options and len(self.options) < 2:
            raise ConfigError(f"--options needs at least 2 options, got {len(self.options)}")
        if len(self.options) > len(LETTERS):
            raise ConfigError(f"--options: at most {len(LETTERS)} options")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.frames_fps <= 0:
            raise ConfigError(f"--frames_fps must be positive, got {self.frames_fps}")


def _warn(msg: str):
    print(msg, file=sys.stderr, flush=True)


def read_video_features(path: str, rule, clip_model: str, device, frames_fps: float = 3.0) -> torch.Tensor:
    """The CLIP image features [n, 768] of the frames `rule` picks from a video file or frame folder."""
    from video.clip import ClipEncoder, preprocess
    from video.frames import VideoError, read_frames
    try:
        (got,) = read_frames(path, [rule], preprocess, folder_fps=frames_fps)
    except VideoError as e:
        raise DataError(f"{path}: {e}") from None
    if isinstance(got, VideoError):
        raise DataError(f"{path}: {got}")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return ClipEncoder(clip_model, device, dtype).images(torch.from_numpy(got[1]))


def run(cfg: AskConfig) -> str:
    """Answer, print and return the answer line."""
    from video.frames import Segments, Strided
    _, _, device = dist.init_distributed(cfg.device)
    T = cfg.model.max_feats
    tok = load_tokenizer_for(cfg.model)
    if cfg.describe:
        protocol, p2, rule = MSRVTT, MSRVTT.p2, Strided(T)
    elif cfg.options:
        protocol, rule = MVBENCH, Segments(T)
        p2 = MVBENCH.p2_text(question=cfg.question, choices=choices_text(cfg.options))
    else:
        protocol, rule = MSRVTT, Strided(T)
        p2 = OPEN_P2.format(question=normalize_question(cfg.question))
    use_memory = protocol.memory if cfg.memory is None else cfg.memory
    if use_memory and not os.path.isfile(cfg.memory_path):
        raise MissingFileError(f"the memory projection needs {cfg.memory_path} (--memory_path; the TextVid text "
                               f"feature memory): not found. --no_memory answers without it")
    if not os.path.exists(cfg.video):
        raise MissingFileError(f"video not found: {cfg.video}")
    feats = read_video_features(cfg.video, rule, cfg.clip_model, device, cfg.frames_fps)
    video = fit_frames(feats, T).to(device)
    if use_memory:
        video = project_to_memory(video, load_memory(cfg.memory_path).to(device))
    model, tok, _ = load_topa(cfg.model, device, resolve_dtype(cfg.model.precision, device), tokenizer=tok,
                              resume=cfg.resume)
    model.eval()
    if cfg.resume is None:
        _warn("warning: no --resume checkpoint: answering with freshly initialised TOPA parameters")

    prompt = prompt_ids(tok, protocol.p1, p2, T)
    masked = masked_ids(tok, warn=_warn) if protocol.mask else []
    if cfg.options:
        letters = letter_ids(tok, len(cfg.options))
        first = []
        (gen,) = greedy_generate(model, [prompt], video[None], max_new_tokens=cfg.max_new_tokens or protocol.max_new_tokens,
                                 eos_id=tok.eos_id, masked_ids=masked,
                                 observe=lambda t, logits: first.append(logits[0, letters]) if t == 0 else None)
        k = int(first[0].argmax())
        after, _ = generated_text(tok, prompt, gen, protocol.marker)
        line = f"({LETTERS[k]}) {cfg.options[k]}"
        if predicted_letter(after, len(cfg.options)) != LETTERS[k]:
            line += f"    (generated freely: {after!r})"
    elif cfg.describe:
        (gen,) = greedy_generate(model, [prompt], video[None], max_new_tokens=cfg.max_new_tokens or protocol.max_new_tokens,
                                 eos_id=tok.eos_id, masked_ids=masked)
        line = protocol.cut(generated_text(tok, prompt, gen, protocol.marker)[0])
    else:
        stop = lambda ids: "\n" in tok.decode(ids)  # noqa: E731
        (gen,) = greedy_generate(model, [prompt], video[None], max_new_tokens=cfg.max_new_tokens or OPEN_NEW_TOKENS,
                                 eos_id=tok.eos_id, stop=stop)
        line = generated_text(tok, prompt, gen, "Answer:")[0].split("\n")[0].strip()
    print(line, flush=True)
    return line
