"""The task sequences (docs/prompts.md) and their scored spans.

A `Sequence` is token ids with `VIDEO` at the T video positions, where the video slot starts, and the
index of the first scored token (targets are tokens[span_start:], each predicted from the position
before it). How sequences become model rows (one whole, or the options of a question packed behind
their shared prefix) is `dataloader/packing.py`.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence as Seq, Tuple

from util.errors import InputError

from .tokenizer import Tokenizer

VIDEO = -2  # placeholder id at video positions (replaced by projected features)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # option letters, (A) (B) ...; multiple-choice sets use the first 4-5

MCQA_INSTR = "Instruction: Choose the correct answer based on the video and question.\n"
CAPTION_INSTR = "Instruction: Generate a summary for the video.\n"
OPENQA_INSTR = "Instruction: Predict the answer based on the video and question.\n"
VAQ_INSTR = "Instruction: Predict the question based on the video and answer.\n"
QAV_INSTR = "Instruction: Predict the video based on the question and answer.\n"
# TVQA: every sequence (with or without subtitles) uses the dialogue instructions
DIALOGUE_INSTR = "Instruction: Predict the answer based on the dialogue, video and question.\n"
DIALOGUE_VAQ_INSTR = "Instruction: Predict the question based on the dialogue, video and answer.\n"
DIALOGUE_QAV_INSTR = "Instruction: Predict the video based on the dialogue, question and answer.\n"
ANSWER_TEXT = "Answer: The correct choice is "
STAR_ANSWER_TEXT = "Answer: The answer is "
DIALOGUE_SPAN = 4  # TVQA scores its last 4 tokens: "(", letter, ")", EOS

# mcqa scored span starts this many tokens after the newline-form "Answer" (the offsets the released
# checkpoints were trained and evaluated with).
MCQA_SPAN_OFFSET = {"sentencepiece": 4, "tiktoken": 5}


class PromptError(InputError, ValueError):
    """A sequence the tokenizer cannot build as the prompt format needs."""


@dataclass(frozen=True)
class PromptStyle:
    """How a benchmark words its multiple-choice sequences."""
    answer_text: str = ANSWER_TEXT   # STAR: "Answer: The answer is "
    enders: str = "?"                # question endings that need no "?" (EgoSchema: "?.")
    dialogue: bool = False           # TVQA: dialogue instructions, optional "Dialogue:" segment, last-4 span


DEFAULT = PromptStyle()
STAR = PromptStyle(answer_text=STAR_ANSWER_TEXT)
EGOSCHEMA = PromptStyle(enders="?.")
TVQA = PromptStyle(dialogue=True)


@dataclass
class Sequence:
    tokens: List[int]
    video_start: Optional[int]
    span_start: int
    n_cut: int = 0  # dialogue tokens removed to fit a length budget (TVQA `max_len`; 0 = whole)

    def __len__(self):
        return len(self.tokens)


def normalize_question(q: str, enders: str = "?") -> str:
    q = q.capitalize().strip()
    if not q.endswith(tuple(enders)):
        q += "?"
    return q


def text_problem(question: str, options: Seq[str]) -> Optional[str]:
    """eval.py's rule for a multiple-choice question's text: the question and every option hold text.
    What is wrong (option positions 0-based), or None."""
    if not question.strip():
        return "the question text is empty"
    for k, o in enumerate(options):
        if not o.strip():
            return f"option {k} is empty"
    return None


def choice_problem(question: str, options: Seq[str]) -> Optional[str]:
    """The rule for a question someone asks (ask.py's flags, the Python API's requests): eval.py's
    `text_problem`, 2 to 26 options, no two of them the same text (the answer could not tell them
    apart). What is wrong, or None. A benchmark's annotations may repeat an option (`gold_index` refuses
    only a gold answer that is ambiguous)."""
    if not 2 <= len(options) <= len(LETTERS):
        return f"give 2 to {len(LETTERS)} options, got {len(options)}"
    problem = text_problem(question, options)
    if problem:
        return problem
    seen = {}
    for k, o in enumerate(options):
        if o.strip() in seen:
            return (f"options {seen[o.strip()]} and {k} are the same text {o.strip()!r}: the answer could not "
                    "tell them apart")
        seen[o.strip()] = k
    return None


def options_text(options: Seq[str]) -> str:
    return "Choices: \n" + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))


def letter(i: int) -> str:
    return f"({LETTERS[i]})"


class PromptBuilder:
    """Builds the task sequences for one tokenizer; all special ids come from the tokenizer.

    `dialogue` (TVQA) is the subtitle text D of the clip or None; the "Dialogue: D\n" segment is present
    only when D is not None. `max_len` (TVQA only, opt-in): the published code's cut, which drops
    dialogue tokens from the end of that segment until the sequence fits `max_len`; question, options
    and answer stay whole, and a sequence that does not fit even without dialogue stays whole too."""

    def __init__(self, tokenizer: Tokenizer, max_feats: int = 10):
        self.tok = tokenizer
        self.T = max_feats
        self.sep = tokenizer.sep_id
        self.answer_id = tokenizer.newline_form("Answer")
        self.question_id = tokenizer.newline_form("Question")
        self.description_id = tokenizer.newline_form("Description")
        self.mcqa_offset = MCQA_SPAN_OFFSET[tokenizer.kind]

    # -- helpers --
    def _video_seq(self, instr: str, after: List[int]) -> Tuple[List[int], int]:
        head = [self.tok.bos_id] + self.tok.encode(instr + "Video:")
        return head + [VIDEO] * self.T + [self.sep] + after + [self.tok.eos_id], len(head)

    def _span(self, tokens, start_search, key_id, offset, what):
        try:
            i = tokens.index(key_id, start_search)
        except ValueError:
            raise PromptError(f"{what} sequence has no newline-form keyword token {key_id} "
                              f"({self.tok.decode([key_id])!r}) after the video slot") from None
        if i + offset >= len(tokens):
            raise PromptError(f"{what} sequence ends before its scored span")
        return i + offset

    def _dialogue(self, style: PromptStyle, dialogue: Optional[str], rest: int,
                  max_len: Optional[int]) -> Tuple[List[int], int]:
        """Token ids of the "Dialogue: D\n" segment (empty without dialogue) and how many were cut so
        that `rest` other tokens + the segment fit `max_len`."""
        if dialogue is None:
            return [], 0
        if not style.dialogue:
            raise PromptError("a dialogue segment needs the dialogue prompt style (TVQA)")
        seg = self.tok.encode(f"Dialogue: {dialogue}\n")
        if max_len is None or rest + len(seg) <= max_len or rest > max_len:  # fits, or cannot: stays whole
            return seg, 0
        keep = max(0, max_len - rest)
        return seg[:keep], len(seg) - keep

    # -- tasks --
    def mcqa(self, question: str, options: Seq[str], answer: int, style: PromptStyle = DEFAULT,
             dialogue: Optional[str] = None, max_len: Optional[int] = None) -> Sequence:
        q = normalize_question(question, style.enders)
        body = self.tok.encode(f"Question: {q}\n" + options_text(options) + style.answer_text + letter(answer))
        if style.dialogue:
            rest = 1 + len(self.tok.encode(DIALOGUE_INSTR + "Video:")) + self.T + 1 + len(body) + 1
            seg, cut = self._dialogue(style, dialogue, rest, max_len)
            tokens, vs = self._video_seq(DIALOGUE_INSTR, seg + body)
            return Sequence(tokens, vs, len(tokens) - DIALOGUE_SPAN, cut)
        self._dialogue(style, dialogue, 0, None)
        tokens, vs = self._video_seq(MCQA_INSTR, body)
        return Sequence(tokens, vs, self._span(tokens, vs + self.T, self.answer_id, self.mcqa_offset, "mcqa"))

    def mcqa_options(self, question, options, **kw) -> List[Sequence]:
        """One mcqa sequence per option (for scoring)."""
        return [self.mcqa(question, options, k, **kw) for k in range(len(options))]

    def caption(self, caption: str) -> Sequence:
        tokens, vs = self._video_seq(CAPTION_INSTR, self.tok.encode(f"\nDescription: {caption}\n"))
        return Sequence(tokens, vs, self._span(tokens, vs + self.T, self.description_id, 1, "caption"))

    def openqa(self, question: str, answer_text: str) -> Sequence:
        q = normalize_question(question)
        tokens, vs = self._video_seq(OPENQA_INSTR, self.tok.encode(f"Question: {q}\nAnswer: {answer_text}\n"))
        return Sequence(tokens, vs, self._span(tokens, vs + self.T, self.answer_id, 1, "open-QA"))

    def vaq(self, question: str, options: Seq[str], answer: int, style: PromptStyle = DEFAULT,
            dialogue: Optional[str] = None, max_len: Optional[int] = None) -> Sequence:
        q = normalize_question(question, style.enders)
        body = self.tok.encode(options_text(options) + style.answer_text + letter(answer) + f"\nQuestion: {q}")
        instr = DIALOGUE_VAQ_INSTR if style.dialogue else VAQ_INSTR
        rest = 1 + len(self.tok.encode(instr + "Video:")) + self.T + 1 + len(body) + 1
        seg, cut = self._dialogue(style, dialogue, rest, max_len)
        tokens, vs = self._video_seq(instr, seg + body)
        return Sequence(tokens, vs, self._span(tokens, vs + self.T + 1 + len(seg), self.question_id, 1, "vaq"),
                        cut)

    def qav(self, question: str, options: Seq[str], answer: int, style: PromptStyle = DEFAULT,
            dialogue: Optional[str] = None, max_len: Optional[int] = None) -> Sequence:
        """Video at the end; span_start is the video slot (frame t is scored from position s+t-1)."""
        q = normalize_question(question, style.enders)
        qa = f"Question: {q}\n" + options_text(options) + style.answer_text + letter(answer) + "\nVideo:"
        if style.dialogue:  # instruction, dialogue and question are separately encoded segments
            head_a, head_b = self.tok.encode(DIALOGUE_QAV_INSTR), self.tok.encode(qa)
            seg, cut = self._dialogue(style, dialogue, 1 + len(head_a) + len(head_b) + self.T + 1, max_len)
            head = [self.tok.bos_id] + head_a + seg + head_b
        else:
            self._dialogue(style, dialogue, 0, None)
            head, cut = [self.tok.bos_id] + self.tok.encode(QAV_INSTR + qa), 0
        tokens = head + [VIDEO] * self.T + [self.tok.eos_id]
        return Sequence(tokens, len(head), len(head), cut)
