"""The generation protocols of MVBench, MSR-VTT and VATEX (docs/prompts.md, "Generation prompts"): the
prompt, what is generated, and how the answer is read from it. The strings live here and nowhere else.

A prompt is `[BOS] + enc(P1) + VIDEO×T + enc(P2)`, each part encoded on its own and **no separator**
after the video (so a P2 that starts with "\\n" begins with Llama-2's `29871, 13`). Decoding is greedy,
at most `max_new_tokens` ids, ending early at EOS; where the protocol masks, the logits of the pieces
` how` and ` How` are set to -100 before each argmax.

The answer is read from the *decoded text*: the tokenizer's decoding of `[BOS] + enc(P1) + enc(P2) +
generated` (video positions left out), cut after the protocol's marker. Decoding the sequence whole
keeps the space of a generated piece that starts a word (`( but`, not `(but`). The marker is looked
for in the prompt part (its last occurrence there), so a question that contains it, or a generation
that repeats it, cannot move the cut.

| protocol | P1 | P2 | memory | new tokens | masked | answer |
|---|---|---|---|---|---|---|
| MVBench | mcqa instruction + `Video:` | `\\nQuestion: {q}\\nChoices: \\n(A) ..\\nAnswer: The correct choice is (` | yes | 2 | yes | text after `The correct choice is ` |
| MSR-VTT | open-QA instruction + `Video:` | `\\nQuestion: Can you describe this video?\\nAnswer: It is a video of` | yes | 10 | yes | after `It is a video of`, stripped, up to the first `.` |
| VATEX | `Instruction: Generate a dense description for the video.\\nVideo:` | `\\nVideo Caption: The video shows` | no | 15 | no | after `Video Caption: `, `The video shows` removed, stripped, up to the first `.` |

MVBench's published correctness check (`published_correct`): with `p` the first space-separated word
of the lower-cased answer text and `g` = `(x)` for the gold letter x, correct iff `p` without dots is a
substring of `g` or `g` is a substring of `p`. It accepts a bare `(` (and an empty answer) for every
gold letter; `predicted_letter` names the letter only when the check singles one out.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from util.errors import TokenizerError

from .prompts import ANSWER_TEXT, LETTERS, MCQA_INSTR, OPENQA_INSTR, VIDEO
from .tokenizer import Tokenizer

MASKED_WORDS = ("how", "How")  # the protocols that mask ban these two word-start pieces


# ---- answer cuts (text after the marker -> answer) ----

def keep(text: str) -> str:
    """MVBench: the text after the marker, as it is (e.g. "(B)")."""
    return text


def first_sentence(text: str) -> str:
    """Stripped, then up to the first "." (MSR-VTT)."""
    return text.strip().split(".")[0]


def vatex_caption(text: str) -> str:
    """"The video shows" removed, stripped, up to the first "." (VATEX)."""
    return first_sentence(text.replace("The video shows", ""))


@dataclass(frozen=True)
class GenProtocol:
    """One benchmark's generation protocol. `p2` is a template: MVBench fills `{question}` and
    `{choices}` (`choices_text`); the captioning ones have no fields."""
    name: str
    p1: str
    p2: str
    memory: bool               # project the video features onto the text memory (the default)
    max_new_tokens: int
    mask: bool                 # mask the pieces " how" and " How"
    marker: str                # the answer is the decoded text after this (found in the prompt)
    cut: Callable[[str], str]  # text after the marker -> answer (MVBench: as is; captions: one sentence)
    metric: str                # "choice" (MVBench accuracy) or "caption" (COCO caption metrics)

    def p2_text(self, **fields) -> str:
        return self.p2.format(**fields)


MVBENCH = GenProtocol(
    "mvbench", MCQA_INSTR + "Video:",
    "\nQuestion: {question}\nChoices: \n{choices}" + ANSWER_TEXT + "(",
    memory=True, max_new_tokens=2, mask=True, marker=ANSWER_TEXT[len("Answer: "):], cut=keep, metric="choice")
MSRVTT = GenProtocol(
    "msrvtt", OPENQA_INSTR + "Video:", "\nQuestion: Can you describe this video?\nAnswer: It is a video of",
    memory=True, max_new_tokens=10, mask=True, marker="It is a video of", cut=first_sentence, metric="caption")
VATEX = GenProtocol(
    "vatex", "Instruction: Generate a dense description for the video.\nVideo:", "\nVideo Caption: The video shows",
    memory=False, max_new_tokens=15, mask=False, marker="Video Caption: ", cut=vatex_caption, metric="caption")


# the open-QA prompt of pre-alignment (the Python API's `answer`: after MSRVTT.p1, greedy to the end of the line)
OPEN_P2 = "\nQuestion: {question}\nAnswer:"
OPEN_NEW_TOKENS = 20


# ---- prompts and ids ----

def choices_text(candidates: Sequence) -> str:
    """MVBench's choice lines: "({letter}) {candidate}\\n" per candidate, letters from A."""
    if len(candidates) > len(LETTERS):
        raise ValueError(f"{len(candidates)} candidates: at most {len(LETTERS)} letters")
    return "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(candidates))


def prompt_ids(tok: Tokenizer, p1: str, p2: str, T: int) -> List[int]:
    """[BOS] + enc(p1) + VIDEO×T + enc(p2): each part encoded on its own, no separator after the video."""
    return [tok.bos_id] + tok.encode(p1) + [VIDEO] * T + tok.encode(p2)


def word_start_id(tok: Tokenizer, word: str) -> Optional[int]:
    """The id of `word` as one piece after a space (Llama-2 "▁how" 920, Llama-3 " how"), read off the
    encoding of "a {word}"; None where the tokenizer splits the word into several pieces."""
    head, ids = tok.encode("a"), tok.encode(f"a {word}")
    if ids[:len(head)] != head or len(ids) != len(head) + 1:
        return None
    return ids[-1]


def masked_ids(tok: Tokenizer, warn=print) -> List[int]:
    """The ids of the pieces " how" and " How". A word the tokenizer has no single piece for cannot be
    masked by id: it is left out, and `warn` says so (never with Llama-2/3's tokenizers)."""
    out = []
    for w in MASKED_WORDS:
        i = word_start_id(tok, w)
        if i is None:
            warn(f"warning: tokenizer {tok.path} has no single piece for ' {w}': it is not masked")
        else:
            out.append(i)
    return out


def letter_ids(tok: Tokenizer, n: int) -> List[int]:
    """Ids of the letters A.. (n of them) as the piece that follows "The correct choice is (" (Llama-2
    "A" 29909, Llama-3 "A" 32): the first id after the prompt in the encoding of the answer "(A)"."""
    head = tok.encode(ANSWER_TEXT + "(")
    out = []
    for letter in LETTERS[:n]:
        ids = tok.encode(ANSWER_TEXT + f"({letter})")
        if ids[:len(head)] != head or len(ids) <= len(head) or tok.decode(ids[len(head):len(head) + 1]) != letter:
            raise TokenizerError(f"tokenizer {tok.path}: the letter {letter} after '(' is not one piece "
                                 f"({ids[len(head) - 1:]}); the letter-constrained answer needs it to be one")
        out.append(ids[len(head)])
    return out


# ---- reading the answer ----

def generated_text(tok: Tokenizer, prompt: Sequence[int], generated: Sequence[int], marker: str) -> Tuple[str, str]:
    """(answer text = the decoded text after the marker, the generated text as it reads in context)
    from the decoding of `prompt` (VIDEO ids left out) + `generated`."""
    ids = [t for t in prompt if t != VIDEO]
    head = tok.decode(ids)
    full = tok.decode(ids + list(generated))
    if not full.startswith(head):
        raise RuntimeError(f"decoding the generated ids changed the prompt's text: {full[len(head) - 40:]!r}")
    at = head.rfind(marker)
    if at < 0:
        raise ValueError(f"the prompt has no marker {marker!r}: ...{head[-80:]!r}")
    return full[at + len(marker):], full[len(head):]


def first_word(text: str) -> str:
    """`p` of the published check: the first space-separated word of the lower-cased text."""
    return text.lower().split(" ")[0]


def published_correct(text: str, gold: str) -> bool:
    """MVBench's published check (module docstring) of answer text `text` against gold letter `gold`."""
    p, g = first_word(text), f"({gold.lower()})"
    return p.replace(".", "") in g or g in p


def predicted_letter(text: str, n: int) -> Optional[str]:
    """The letter among the first `n` that the published check accepts, when it accepts exactly one;
    None otherwise (a bare "(", an empty answer, text that is no letter)."""
    ok = [c for c in LETTERS[:n] if published_correct(text, c)]
    return ok[0] if len(ok) == 1 else None
