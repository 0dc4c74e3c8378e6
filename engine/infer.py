"""The inference core: the one place where TOPA answers. eval.py's tasks (engine/scoring.py,
engine/generation.py), training's per-epoch evaluation (through engine/scoring.py) and the Python API
(engine/api.py; through it ask.py, the demo app.py and the lmms-eval plugin engine/lmms.py) all call

    score(model, batch, memory, greedy)        -> [Scored]     per question, every option's mean NLL
    generate(model, tok, prompts, decoding, memory) -> [Generated]  greedy answers, first-step letters

over plain request records, built by each caller from its own inputs:

    Question(video, seqs)            a multiple-choice question, or one continuation to score: a fitted
                                     video [T, 768] and one token sequence per option, sharing the
                                     prefix up to their scored spans (text/prompts.py); the collate of
                                     dataloader/packing.py turns questions into a `Batch` (eval.py's
                                     DataLoader workers do it; `score_all` does it for a list)
    Prompt(ids, video, n_letters)    a generation request: `[BOS] P1 VIDEO×T P2` ids and its video
    Decoding(max_new_tokens, marker, masked, letters, until, kv_cache)   how a batch is decoded and read

The scored NLL is the loss's (engine/losses.py: logits once per distinct predicting position); `greedy`
also says whether every scored token is its position's argmax (lm-eval's "is greedy"), from the same
forward. Generation is `llama.decoding.greedy_generate` (KV cache, or the full recomputation). A video
is projected onto the text memory here when `memory` is given (batched on the device), or arrives
projected (the API projects per request). The callers plan the batches (eval.py over the processes;
`score_all` / `generate_all` in chunks of `batch_size`, in order). A score or a pick that is not finite
is reported (`Scored.finite`, `Generated.finite`), never raised: each caller names its own item.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from dataloader.packing import Batch, ScoringCollate
from llama.adapter import TOPA
from llama.decoding import Watch, greedy_generate, nonfinite_pick
from llama.memory import project
from text.prompts import Sequence as Seq
from text.protocols import generated_text
from text.tokenizer import Tokenizer

from .losses import group_mean, nll_of, token_logits


# ---------------------------------------------------------------- scoring

@dataclass
class Question:
    """A question to score: its fitted video [T, 768] and one sequence per option."""
    video: torch.Tensor
    seqs: List[Seq]


@dataclass
class Scored:
    """A question's scores: per option, the mean NLL of its span and (greedy=True) whether every token of
    it is its position's argmax."""
    nll: List[float]
    greedy: Optional[List[bool]] = None

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in self.nll)


@torch.no_grad()
def score(model: TOPA, batch: Batch, memory: Optional[torch.Tensor] = None, greedy: bool = False) -> List[Scored]:
    """Per question of the batch (a collated list of `Question`s or eval's items), its options' scores."""
    logits = token_logits(model, batch, project(batch.video, memory))
    means = group_mean(nll_of(logits, batch), batch.t_group, batch.n_groups).cpu()
    per_item = torch.bincount(batch.g_item.cpu(), minlength=len(batch.items)).tolist()
    out = [Scored(s.tolist()) for s in means.split(per_item)]
    if greedy:
        wrong = torch.zeros(batch.n_groups, device=logits.device)
        wrong.index_add_(0, batch.t_group, (logits.argmax(-1)[batch.t_inv] != batch.t_tgt).float())
        for s, ok in zip(out, (wrong == 0).cpu().split(per_item)):
            s.greedy = ok.tolist()
    return out


def score_all(model: TOPA, questions: Sequence[Question], *, batch_size: int, device, scoring: str = "packed",
              greedy: bool = False) -> List[Scored]:
    """`score` over `questions` (videos as the model reads them) in order, `batch_size` a batch (`scoring`:
    packed or full, same scores)."""
    collate, out = ScoringCollate(scoring), []
    for i in range(0, len(questions), batch_size):
        out += score(model, collate(questions[i:i + batch_size]).to(device), None, greedy)
    return out


# ---------------------------------------------------------------- generation

@dataclass
class Prompt:
    """A generation request: `[BOS] P1 VIDEO×T P2` ids, the fitted video [T, 768], and how many letters
    (A, B, ..) its answer may be (their first-step logits are ranked when `Decoding.letters` is set)."""
    ids: List[int]
    video: torch.Tensor
    n_letters: int = 0


@dataclass(frozen=True)
class Decoding:
    """How a batch is decoded and read: at most `max_new_tokens` greedy ids (EOS ends a row), the ids
    `masked` out before each argmax, the letter ids A.. whose first-step logits are read, the answer read
    after `marker` in the decoded text ("": all of the generated text) up to the first `until` string
    (each also ends a row's decoding), from a KV cache or (kv_cache=False) by full recomputation."""
    max_new_tokens: int
    marker: str = ""
    masked: Tuple[int, ...] = ()
    letters: Tuple[int, ...] = ()
    until: Tuple[str, ...] = ()
    kv_cache: bool = True


@dataclass
class Generated:
    """One answer: the generated ids (EOS left out), `after` (the decoded text after the marker, up to the
    first `until` string), `text` (the generated text as it reads in context), when letters are read the
    index of the prompt's letter (A first) with the highest first-step logit (`letter`), and `finite`
    (every pick was made from finite scores; otherwise `after` and `text` are empty)."""
    ids: List[int]
    after: str
    text: str
    letter: Optional[int] = None
    finite: bool = True


@torch.no_grad()
def generate(model: TOPA, tok: Tokenizer, prompts: Sequence[Prompt], decoding: Decoding,
             memory: Optional[torch.Tensor] = None) -> List[Generated]:
    """Greedy answers of one batch of prompts (see `Decoding`)."""
    device = model.tok_embeddings.weight.device
    video = project(torch.stack([p.video for p in prompts]).to(device), memory)
    until = tuple(decoding.until)
    stop = [lambda ids: any(s in tok.decode(ids) for s in until)] * len(prompts) if until else None
    watch = Watch(decoding.letters)
    ids = greedy_generate(model, [p.ids for p in prompts], video, max_new_tokens=decoding.max_new_tokens,
                          eos_id=tok.eos_id, masked_ids=decoding.masked, stop=stop, use_cache=decoding.kv_cache,
                          observe=watch)
    bad, first = watch.read()
    out = []
    for b, (p, gen) in enumerate(zip(prompts, ids)):
        if nonfinite_pick(bad, b, gen):
            out.append(Generated(gen, "", "", finite=False))
            continue
        after, text = generated_text(tok, p.ids, gen, decoding.marker)
        for s in until:
            after = after.split(s)[0]
        if decoding.letters and p.n_letters:
            out.append(Generated(gen, after, text, int(first[b, :p.n_letters].argmax())))
        else:
            out.append(Generated(gen, after, text))
    return out


def generate_all(model: TOPA, tok: Tokenizer, prompts: Sequence[Prompt], decoding: Decoding, *,
                 batch_size: int) -> List[Generated]:
    """`generate` over `prompts` (videos as the model reads them) in order, `batch_size` a batch."""
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate(model, tok, prompts[i:i + batch_size], decoding)
    return out
