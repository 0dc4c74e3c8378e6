"""What each request kind of the Python API (engine/api.py) asks and answers: its frames and memory
(`KINDS`), its prompt and decoding as the inference core's records (engine/infer.py), and its result
(`Choice`, `Answer`, `LogLikelihood`) read from the core's output. The API's docstring has the table of
the kinds, docs/prompts.md the prompts. Nothing here runs the model.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from text.prompts import LETTERS, VIDEO, Sequence as Seq, normalize_question
from text.protocols import (MSRVTT, MVBENCH, OPEN_NEW_TOKENS, OPEN_P2, GenProtocol, choices_text, predicted_letter,
                            prompt_ids)
from text.tokenizer import Tokenizer
from util.errors import NonFiniteError, RequestError
from video.features import Frames

from . import infer

OPEN = GenProtocol("open", MSRVTT.p1, OPEN_P2, MSRVTT.memory, OPEN_NEW_TOKENS, mask=False, marker="Answer:",
                   cut=str.strip, metric="")   # `answer`'s protocol (no benchmark, so no metric)


@dataclass(frozen=True)
class Kind:
    rule: str        # the frame rule's name (video/features.py)
    memory: bool     # the protocol's memory projection


KINDS = {"choose": Kind("fps1", False), "mvbench": Kind("segments", MVBENCH.memory),
         "describe": Kind("strided", MSRVTT.memory), "answer": Kind("strided", MSRVTT.memory),
         "loglikelihood": Kind("segments", True), "complete": Kind("segments", True)}


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


# ---------------------------------------------------------------- requests -> core records
# (the requests arrive checked: engine/edge.py)

def open_p2(question: str) -> str:
    """The open question's P2 (`answer`)."""
    return OPEN_P2.format(question=normalize_question(question))


def mvbench_p2(question: str, options: Sequence[str]) -> str:
    return MVBENCH.p2_text(question=question, choices=choices_text(options))


def decoding(p: GenProtocol, max_new_tokens: int, masked=(), letters=(), until=()) -> infer.Decoding:
    """A protocol's decoding: its marker, and `masked` when the protocol masks."""
    return infer.Decoding(max_new_tokens, p.marker, tuple(masked) if p.mask else (), tuple(letters), tuple(until))


def continuation(tok: Tokenizer, p1: str, context: str, cont: str, T: int) -> Seq:
    """`[BOS] p1 VIDEO×T context continuation` with the continuation's tokens scored: those the encoding
    of context + continuation adds after the context's (spaces at the context's end move to the
    continuation)."""
    ctx_text = context.rstrip(" ")
    cont_text = context[len(ctx_text):] + cont
    prompt = prompt_ids(tok, p1, ctx_text, T)
    ids = tok.encode(ctx_text + cont_text)[len(tok.encode(ctx_text)):]
    if not ids:
        raise RequestError(f"the continuation {cont!r} adds no token to the context")
    return Seq(prompt + ids, prompt.index(VIDEO), len(prompt))


# ---------------------------------------------------------------- core outputs -> results

def choice(i: int, s: infer.Scored, options: Sequence[str], frames: Optional[Frames]) -> Choice:
    if not s.finite:
        raise NonFiniteError(f"choose: question {i}: option scores {s.nll} are not finite (the model's output "
                             "overflowed or is NaN), so it has no prediction; check the checkpoint's tensors, or run "
                             "with --precision fp32")
    k = min(range(len(s.nll)), key=s.nll.__getitem__)
    p = torch.softmax(-torch.tensor(s.nll, dtype=torch.float64), 0).tolist()
    return Choice(k, options[k], LETTERS[k], s.nll, p, frames)


def answer(g: infer.Generated, cut, frames: Optional[Frames], n_letters: int = 0) -> Answer:
    if not g.finite:
        raise NonFiniteError("the model's next-token scores are not finite (its output overflowed or is "
                             "NaN); check the checkpoint's tensors, or run with --precision fp32")
    a = Answer(cut(g.after), g.text, frames)
    if n_letters:
        a.choice, a.letter, a.free_letter = g.letter, LETTERS[g.letter], predicted_letter(g.after, n_letters)
    return a


def likelihood(i: int, s: infer.Scored, n_tokens: int) -> LogLikelihood:
    m = s.nll[0]
    if not math.isfinite(m):
        raise NonFiniteError(f"request {i}: the continuation's NLL is not finite (the model's output "
                             "overflowed or is NaN); try --precision fp32")
    return LogLikelihood(m, m * n_tokens, n_tokens, None if s.greedy is None else bool(s.greedy[0]))
