"""ask.py: one video file (or frame folder) -> frames -> CLIP ViT-L/14 image features -> TOPA -> an answer,
through the Python API (engine/api.py), which says which prompt, frames and memory each request uses:

  --question Q --options O1 O2 ..   MVBench's letter protocol (`TOPAVideoQA.mvbench`): the option of the
                                    letter the model ranks highest after "The correct choice is (",
                                    among the given letters only; the two tokens it generates freely are
                                    shown too where they name another letter or none.
  --describe                        MSR-VTT's captioning prompt (`describe`), first sentence
  --question Q                      the open-QA prompt of pre-alignment (`answer`), to the end of the line

`--memory` / `--no_memory` override the memory projection; `--max_new_tokens` the token budget. The
answer is the only line on stdout; warnings go to stderr.
"""
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from text.prompts import choice_problem, text_problem
from util.errors import ConfigError
from util.settings import setting

from .config import QAConfig


@dataclass
class AskConfig:
    """ask.py's settings: the video, the request, and the API's (QAConfig, with the model's)."""
    GROUP = "request"

    video: str = setting(help="a video file (mp4, mkv, webm, ...) or a folder of numbered frames", positional=True)
    api: QAConfig = field(default_factory=QAConfig)
    question: Optional[str] = setting(None, "the question (with --options: multiple choice; default: none, give "
                                            "--describe)", aliases=("-q",))
    options: List[str] = setting(help="the answer options, 2 or more (default: none, an open question)", factory=list,
                                 nargs="+")
    describe: bool = setting(False, "describe the video (MSR-VTT's captioning prompt)")
    max_new_tokens: Optional[int] = setting(None, "the token budget (default: the prompt's protocol)")

    def __post_init__(self):
        if self.describe and self.options:
            raise ConfigError("--describe takes no --options (it asks for a description; --question with "
                              "--options asks a multiple-choice question)")
        if self.describe == (self.question is not None):
            raise ConfigError("give either --question (with or without --options) or --describe")
        if self.question is not None:
            problem = choice_problem(self.question, self.options) if self.options else \
                text_problem(self.question, [])
            if problem:
                raise ConfigError(f"{'--question' if problem.startswith('the question') else '--options'}: {problem}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def kind(self) -> str:
        return "describe" if self.describe else "mvbench" if self.options else "answer"


def mc_line(options, a) -> str:
    """MVBench letter protocol answer as ask.py prints it."""
    line = f"({a.letter}) {options[a.choice]}"
    if a.free_letter != a.letter:
        line += f"    (generated freely: {a.text!r})"
    return line


def run(cfg: AskConfig) -> str:
    """Answer, print and return the answer line. The inputs (memory file, video, its frames) are checked
    and read before the model loads."""
    from .api import TOPAVideoQA
    qa = TOPAVideoQA(cfg.api, warn=lambda m: print(m, file=sys.stderr, flush=True))
    qa.check_memory(cfg.kind)
    qa.features(cfg.video)
    if cfg.describe:
        line = qa.describe(cfg.video, max_new_tokens=cfg.max_new_tokens).text
    elif cfg.options:
        line = mc_line(cfg.options, qa.mvbench(cfg.video, cfg.question, cfg.options, max_new_tokens=cfg.max_new_tokens))
    else:
        line = qa.answer(cfg.video, cfg.question, max_new_tokens=cfg.max_new_tokens).text
    print(line, flush=True)
    return line
