"""The generation protocols (docs/evaluation.md (generation benchmarks), docs/prompts.md) on the real Llama-2 SentencePiece and Llama-3 tiktoken tokenizers:
the exact prompt ids (no separator after the video; Llama-2's P2 starts 29871, 13), the masked ids
and letter ids, the decoded-text rule (a generated word keeps its space), the answer cuts, and
MVBench's published correctness check on hand-made cases, including a bare "("."""
import os

import pytest

from text import protocols as P
from text.prompts import VIDEO
from text.tokenizer import load_tokenizer
from toyworld.fixtures import fixtures_dir

FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES

# hand-checked ids of the real tokenizers (docs/prompts.md; decoded piece by piece when written down)
IDS = {
    "llama2": {
        "mvbench_p1": [2799, 4080, 29901, 14542, 852, 278, 1959, 1234, 2729, 373, 278, 4863, 322, 1139, 29889, 13,
                       15167, 29901],
        "mvbench_p2": [29871, 13, 16492, 29901, 1724, 338, 278, 767, 2599, 29973, 13, 15954, 1575, 29901, 29871, 13,
                       29898, 29909, 29897, 7984, 292, 13, 29898, 29933, 29897, 6025, 3277, 13, 22550, 29901, 450,
                       1959, 7348, 338, 313],
        "msrvtt_p2": [29871, 13, 16492, 29901, 1815, 366, 8453, 445, 4863, 29973, 13, 22550, 29901, 739, 338, 263,
                      4863, 310],
        "vatex_p1": [2799, 4080, 29901, 3251, 403, 263, 20619, 6139, 363, 278, 4863, 29889, 13, 15167, 29901],
        "vatex_p2": [29871, 13, 15167, 9243, 683, 29901, 450, 4863, 3697],
        "masked": [920, 1128], "letters": [29909, 29933, 29907, 29928, 29923],
    },
    "llama3": {
        "mvbench_p1": [17077, 25, 22991, 279, 4495, 4320, 3196, 389, 279, 2835, 323, 3488, 627, 10955, 25],
        "mvbench_p2": [198, 14924, 25, 3639, 374, 279, 893, 3815, 5380, 90383, 25, 720, 4444, 8, 17677, 198, 5462,
                       8, 29066, 198, 16533, 25, 578, 4495, 5873, 374, 320],
        "msrvtt_p2": [198, 14924, 25, 3053, 499, 7664, 420, 2835, 5380, 16533, 25, 1102, 374, 264, 2835, 315],
        "vatex_p1": [17077, 25, 20400, 264, 29050, 4096, 369, 279, 2835, 627, 10955, 25],
        "vatex_p2": [198, 10955, 38700, 25, 578, 2835, 5039],
        "masked": [1268, 2650], "letters": [32, 33, 34, 35, 36],
    },
}
QUESTION, CANDIDATES = "What is the man doing?", ["cooking", "dancing"]


@pytest.fixture(scope="module", params=["llama2", "llama3"])
def tok(request):
    return load_tokenizer(os.path.join(FIX, request.param, "tokenizer.model"))


def ids(tok):
    return IDS["llama2" if tok.kind == "sentencepiece" else "llama3"]


def mvbench_prompt(tok, question=QUESTION, candidates=CANDIDATES):
    return P.prompt_ids(tok, P.MVBENCH.p1, P.MVBENCH.p2_text(question=question, choices=P.choices_text(candidates)), 10)


def test_prompts_are_the_exact_ids(tok):
    want = ids(tok)
    got = mvbench_prompt(tok)
    assert got == [tok.bos_id] + want["mvbench_p1"] + [VIDEO] * 10 + want["mvbench_p2"]
    # no separator after the video: Llama-2's P2 starts with "▁" "\n" (29871, 13), Llama-3's with "\n" (198),
    # never with the scoring prompts' SEP (13 / 627) alone
    after = got[got.index(VIDEO) + 10:]
    assert after[:2] == ([29871, 13] if tok.kind == "sentencepiece" else [198, 14924])
    assert P.prompt_ids(tok, P.MSRVTT.p1, P.MSRVTT.p2, 10)[-len(want["msrvtt_p2"]) - 1:] == [VIDEO] + want["msrvtt_p2"]
    assert P.prompt_ids(tok, P.VATEX.p1, P.VATEX.p2, 10) == [tok.bos_id] + want["vatex_p1"] + [VIDEO] * 10 + want["vatex_p2"]


def test_masked_and_letter_ids(tok):
    assert P.masked_ids(tok) == ids(tok)["masked"]
    assert [tok.decode([i]).strip() for i in P.masked_ids(tok)] == ["how", "How"]
    assert P.letter_ids(tok, 5) == ids(tok)["letters"]
    assert len(P.letter_ids(tok, 26)) == 26


def test_a_tokenizer_without_the_pieces_masks_what_it_has(tmp_path):
    from toyworld.tiny import train_sentencepiece
    tiny = load_tokenizer(train_sentencepiece(tmp_path / "t.model", ["How are you"], vocab_size=400))
    warned = []
    got = P.masked_ids(tiny, warn=warned.append)
    assert P.word_start_id(tiny, "how") is None and len(tiny.encode("a how")) > 2
    assert got == [P.word_start_id(tiny, "How")] and len(warned) == 1 and "' how'" in warned[0]


def piece(tok, word):
    """The id of `word` as a generated word start ("▁but" / " but")."""
    return P.word_start_id(tok, word)


def test_decoded_text_keeps_the_space_of_a_generated_word(tok):
    prompt = mvbench_prompt(tok)
    letters = P.letter_ids(tok, 2)
    close = tok.encode(P.ANSWER_TEXT + "(B)")[-1]
    after, text = P.generated_text(tok, prompt, [letters[1], close], P.MVBENCH.marker)
    assert after == "(B)" and text == "B)"
    after, text = P.generated_text(tok, prompt, [piece(tok, "but")], P.MVBENCH.marker)
    assert after == "( but" and text == " but"   # decoding the generated id alone would give "but"
    assert tok.decode([piece(tok, "but")]).strip() == "but"
    # a question that contains the marker does not move the cut (it is the prompt's last one)
    tricky = mvbench_prompt(tok, question="Is The correct choice is (A) a trap?")
    assert P.generated_text(tok, tricky, [letters[0], close], P.MVBENCH.marker)[0] == "(A)"
    assert P.generated_text(tok, prompt, [], P.MVBENCH.marker) == ("(", "")


def continuation(tok, p2, more):
    """The ids that continue enc(p2) with `more`, as the model would generate them."""
    head, ids = tok.encode(p2), tok.encode(p2 + more)
    assert ids[:len(head)] == head
    return ids[len(head):]


def test_caption_cuts(tok):
    msr = P.prompt_ids(tok, P.MSRVTT.p1, P.MSRVTT.p2, 10)
    gen = continuation(tok, P.MSRVTT.p2, " a man is cooking. It is")
    after, text = P.generated_text(tok, msr, gen, P.MSRVTT.marker)
    assert after == text == " a man is cooking. It is"
    assert P.MSRVTT.cut(after) == "a man is cooking"
    vat = P.prompt_ids(tok, P.VATEX.p1, P.VATEX.p2, 10)
    after, text = P.generated_text(tok, vat, continuation(tok, P.VATEX.p2, " a dog runs"), P.VATEX.marker)
    assert after == "The video shows a dog runs" and text == " a dog runs"
    assert P.VATEX.cut(after) == "a dog runs"
    # the cut rules by hand
    assert P.first_sentence("  two men talk . then") == "two men talk "
    assert P.first_sentence(".") == "" and P.first_sentence("no period ") == "no period"
    assert P.vatex_caption("The video shows The video shows a cat. The video shows") == "a cat"


@pytest.mark.parametrize("text,gold,correct,letter", [
    ("(B)", "B", True, "B"),
    ("(B)", "C", False, "B"),
    ("(b).", "B", True, "B"),                 # dots are dropped from p
    ("(B) because it", "B", True, "B"),       # p is the first space-separated word
    ("(B)is", "B", True, "B"),                # g in p
    ("(b", "B", True, "B"),                   # p in g
    ("B)", "B", True, "B"),
    ("(", "A", True, None),                   # a bare "(" passes the published check for every gold letter
    ("( but", "D", True, None),               # ... so does an answer that starts a new word
    ("", "C", True, None),
    ("(A)(B)", "B", True, None),              # names two letters
    ("(E)", "A", False, None),                # E is not one of 4 candidates
    ("(bb", "B", False, None),
    ("\n(C)", "B", False, "C"),                # g in p: whatever comes before the parenthesis
])
def test_published_check_by_hand(text, gold, correct, letter):
    assert P.published_correct(text, gold) is correct
    assert P.predicted_letter(text, 4) == letter


def test_protocol_table():
    assert (P.MVBENCH.memory, P.MVBENCH.max_new_tokens, P.MVBENCH.mask) == (True, 2, True)
    assert (P.MSRVTT.memory, P.MSRVTT.max_new_tokens, P.MSRVTT.mask) == (True, 10, True)
    assert (P.VATEX.memory, P.VATEX.max_new_tokens, P.VATEX.mask) == (False, 15, False)
    assert P.MVBENCH.p1 == "Instruction: Choose the correct answer based on the video and question.\nVideo:"
    assert P.MSRVTT.p1 == "Instruction: Predict the answer based on the video and question.\nVideo:"
    assert P.MVBENCH.p2_text(question="Q?", choices=P.choices_text(["x", 3])) == \
        "\nQuestion: Q?\nChoices: \n(A) x\n(B) 3\nAnswer: The correct choice is ("
    assert P.MVBENCH.marker == "The correct choice is "
