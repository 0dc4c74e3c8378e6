"""The prompt contract (docs/prompts.md) pinned on the real Llama-2 and Llama-3 tokenizers of tests/fixtures.

Every expected sequence here is built independently from the token-sequence table of docs/prompts.md: the
instruction strings are written out literally, each string segment is encoded on its own, and the
keyword / separator ids are the ones the real tokenizers give (tests/fixtures/README.md), not the ones the
prompt code derives. The builder's tokens, video slot and scored span must equal that, on real
NExT-QA, EgoSchema and TVQA questions. Also: the TVQA subtitle rule on a hand-written .srt, the
`--truncate_dialogue` cut, and the README's count of NExT-QA val prompts longer than 128 tokens.
"""
import csv
import json
import re
from pathlib import Path

import pytest

from text.prompts import DEFAULT, EGOSCHEMA, STAR, TVQA, VIDEO, PromptBuilder, PromptError
from text.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
T = 10  # max_feats of every published script

# ---- the one place that reads a benchmark reader's internals (adapt here if the reader moves) ----


def tvqa_dialogues(root: Path, split: str) -> dict:
    """{qid: dialogue D or None} of the TVQA questions under `root`, read with subtitles (--sub)."""
    from dataloader import tvqa
    return {r.qid: r.dialogue for r in tvqa.read_records(root, split, sub=True)}


# ---- docs/prompts.md facts, literally ----

IDS = {  # tests/fixtures/README.md and docs/prompts.md
    "llama2": dict(bos=1, eos=2, sep=13, answer=22550, question=16492, description=9868, offset=4,
                   open_paren=313, close_paren=29897),
    "llama3": dict(bos=128000, eos=128001, sep=627, answer=16533, question=14924, description=5116, offset=5,
                   open_paren=320, close_paren=8),
}
INSTR = {
    "mcqa": "Instruction: Choose the correct answer based on the video and question.\n",
    "caption": "Instruction: Generate a summary for the video.\n",
    "openqa": "Instruction: Predict the answer based on the video and question.\n",
    "vaq": "Instruction: Predict the question based on the video and answer.\n",
    "qav": "Instruction: Predict the video based on the question and answer.\n",
    "tvqa": "Instruction: Predict the answer based on the dialogue, video and question.\n",
    "tvqa_vaq": "Instruction: Predict the question based on the dialogue, video and answer.\n",
    "tvqa_qav": "Instruction: Predict the video based on the dialogue, question and answer.\n",
}
ANSWER = {"default": "Answer: The correct choice is ", "star": "Answer: The answer is "}


def norm_q(q: str, enders: str = "?") -> str:
    q = q.capitalize().strip()
    return q if q.endswith(tuple(enders)) else q + "?"


def opts_text(options) -> str:
    return "Choices: \n" + "".join(f"({'ABCDE'[i]}) {o}\n" for i, o in enumerate(options))


def video_seq(tok, ids, instr, *after_segments):
    """BOS enc(instr + "Video:") V×T SEP enc(seg_1) enc(seg_2) ... EOS -> (tokens, video_start)."""
    head = [ids["bos"]] + tok.encode(instr + "Video:")
    tokens = head + [VIDEO] * T + [ids["sep"]]
    for s in after_segments:
        tokens += tok.encode(s)
    return tokens + [ids["eos"]], len(head)


def first_after(tokens, key, start):
    return tokens.index(key, start)


def expect_mcqa(tok, ids, q, options, k, wording="default", enders="?"):
    text = f"Question: {norm_q(q, enders)}\n" + opts_text(options) + ANSWER[wording] + f"({'ABCDE'[k]})"
    tokens, vs = video_seq(tok, ids, INSTR["mcqa"], text)
    return tokens, vs, first_after(tokens, ids["answer"], vs + T) + ids["offset"]


def expect_tvqa(tok, ids, q, options, k, dialogue=None):
    body = f"Question: {norm_q(q)}\n" + opts_text(options) + ANSWER["default"] + f"({'ABCDE'[k]})"
    segs = ([] if dialogue is None else [f"Dialogue: {dialogue}\n"]) + [body]
    tokens, vs = video_seq(tok, ids, INSTR["tvqa"], *segs)
    return tokens, vs, len(tokens) - 4


def expect_vaq(tok, ids, q, options, k, dialogue=None, tvqa=False):
    body = opts_text(options) + ANSWER["default"] + f"({'ABCDE'[k]})" + f"\nQuestion: {norm_q(q)}"
    segs = ([] if dialogue is None else [f"Dialogue: {dialogue}\n"]) + [body]
    tokens, vs = video_seq(tok, ids, INSTR["tvqa_vaq" if tvqa else "vaq"], *segs)
    return tokens, vs, first_after(tokens, ids["question"], vs + T) + 1


def expect_qav(tok, ids, q, options, k, dialogue=None, tvqa=False):
    qa = f"Question: {norm_q(q)}\n" + opts_text(options) + ANSWER["default"] + f"({'ABCDE'[k]})\nVideo:"
    if tvqa:
        head = [ids["bos"]] + tok.encode(INSTR["tvqa_qav"])
        head += [] if dialogue is None else tok.encode(f"Dialogue: {dialogue}\n")
        head += tok.encode(qa)
    else:
        head = [ids["bos"]] + tok.encode(INSTR["qav"] + qa)
    return head + [VIDEO] * T + [ids["eos"]], len(head), len(head)


def check(seq, expected):
    tokens, vs, span = expected
    assert seq.tokens == tokens
    assert (seq.video_start, seq.span_start) == (vs, span)
    assert seq.tokens[vs:vs + T] == [VIDEO] * T and VIDEO not in seq.tokens[:vs] + seq.tokens[vs + T:]


# ---- real questions ----

@pytest.fixture(scope="module", params=["llama2", "llama3"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def toks(fixtures_dir):
    return {k: load_tokenizer(fixtures_dir / k / "tokenizer.model") for k in ("llama2", "llama3")}


@pytest.fixture(scope="module")
def nextqa_rows(fixtures_dir):
    with open(fixtures_dir / "nextqa" / "val.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nextqa_sample(nextqa_rows):
    """First rows, the longest prompt (5907839036_3), an option with a leading space (" oven")."""
    picked = nextqa_rows[:4] + [r for r in nextqa_rows if (r["video"], r["qid"]) == ("5907839036", "3")]
    picked += [next(r for r in nextqa_rows if " oven" in [r[f"a{i}"] for i in range(5)])]
    assert len(picked) == 6
    return [(r["question"], [r[f"a{i}"] for i in range(5)], int(r["answer"])) for r in picked]


@pytest.fixture(scope="module")
def egos_sample(fixtures_dir):
    qs = json.loads((fixtures_dir / "egoschema" / "questions_sample_617b469.json").read_text())
    picked = [qs[0], qs[1], qs[2], qs[15]]  # ending ".", "?", ".", and one with an apostrophe
    return [(q["question"], [q[f"option {i}"] for i in range(5)]) for q in picked]


@pytest.fixture(scope="module")
def tvqa_sample(fixtures_dir):
    with open(fixtures_dir / "tvqa" / "tvqa_test_public.jsonl", encoding="utf-8") as f:
        lines = [json.loads(l) for l in f]
    no_qmark = [x for x in lines if not x["q"].strip().endswith("?")][:2]
    picked = lines[:4] + no_qmark  # lines[0] has an option with a trailing space
    return [(x["q"], [x[f"a{i}"] for i in range(5)]) for x in picked]


# ---- ids ----

def test_separator_and_keyword_ids_are_the_real_tokenizers(toks, kind):
    tok, ids = toks[kind], IDS[kind]
    assert (tok.bos_id, tok.eos_id, tok.sep_id) == (ids["bos"], ids["eos"], ids["sep"])
    for word in ("Answer", "Question", "Description"):
        assert tok.newline_form(word) == ids[word.lower()], word
        assert tok.encode("x\n" + word)[-1] == ids[word.lower()], word  # newline form inside a segment
    # the README's facts, from the tokenizer files themselves
    if kind == "llama2":
        assert tok.encode("\nAnswer") == [29871, 13, 22550] and tok.encode("\nQuestion") == [29871, 13, 16492]
        assert tok.encode("\nDescription")[-1] == 9868
        assert tok.encode("Answer: The correct choice is (A)") == [673, 29901, 450, 1959, 7348, 338, 313, 29909, 29897]
        assert [tok.encode(w)[0] for w in ("Answer", "Question", "Video")] == [673, 894, 13987]  # segment start
        assert tok.decode([13]) == "\n"
    else:
        assert tok.encode("\nAnswer:") == [198, 16533, 25]
        assert tok.encode("Answer: The correct choice is (A)") == [16533, 25, 578, 4495, 5873, 374, 320, 32, 8]
        assert [tok.encode(w) for w in ("Question", "Description", "Video", ".\n")] == [[14924], [5116], [10955], [627]]


# ---- every task's sequence and scored span ----

def test_mcqa_sequences_and_spans_on_real_questions(toks, kind, nextqa_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    for q, options, answer in nextqa_sample:
        seqs = b.mcqa_options(q, options, style=DEFAULT)
        assert len(seqs) == 5
        for k, seq in enumerate(seqs):
            exp = expect_mcqa(tok, ids, q, options, k)
            check(seq, exp)
            assert seq.tokens[exp[1] + T] == ids["sep"]
            span = seq.tokens[seq.span_start:]
            letter = tok.encode(f"choice is ({'ABCDE'[k]})")[-2]
            if kind == "llama2":  # newline-form Answer +4: "choice is (X)" EOS
                assert span == [7348, 338, 313, letter, 29897, 2]
                assert tok.decode(span[:-1]) == f"choice is ({'ABCDE'[k]})"
            else:                 # +5: " is (X)" EOS
                assert span == [374, 320, letter, 8, 128001]
                assert tok.decode(span[:-1]) == f" is ({'ABCDE'[k]})"
            assert seq.tokens[seq.span_start - ids["offset"]] == ids["answer"]
        # options differ only in the letter: every sequence shares everything before it
        assert all(s.tokens[:-3] == seqs[0].tokens[:-3] for s in seqs)
    assert b.mcqa(q, options, answer).tokens == expect_mcqa(tok, ids, q, options, answer)[0]


def test_star_wording_and_span(toks, kind, nextqa_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    for q, options, _ in nextqa_sample[:4]:
        options = options[:4]
        for k in range(4):
            seq = b.mcqa(q, options, k, style=STAR)
            check(seq, expect_mcqa(tok, ids, q, options, k, wording="star"))
            span = seq.tokens[seq.span_start:]
            # "Answer: The answer is (X)": +4 (Llama-2) lands on "is", +5 (Llama-3) on " ("
            want = f"is ({'ABCDE'[k]})" if kind == "llama2" else f" ({'ABCDE'[k]})"
            assert tok.decode(span[:-1]) == want and span[-1] == ids["eos"]
            assert "(E)" not in tok.decode(seq.tokens[seq.video_start + T:])


def test_egoschema_questions_keep_their_full_stop(toks, kind, egos_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    for q, options in egos_sample:
        for k in range(5):
            check(b.mcqa(q, options, k, style=EGOSCHEMA), expect_mcqa(tok, ids, q, options, k, enders="?."))
        seq = b.mcqa(q, options, 0, style=EGOSCHEMA)
        text = tok.decode(seq.tokens[seq.video_start + T + 1:])
        assert f"Question: {q.capitalize().strip()}\nChoices:" in text  # no "?" after a "."
    # the default style would add "?" after the "."
    q, options = egos_sample[0]
    seq = b.mcqa(q, options, 0)
    assert q.endswith(".") and f"{q.capitalize().strip()}?\n" in tok.decode(seq.tokens[seq.video_start + T + 1:])


def test_caption_openqa_vaq_qav_spans(toks, kind, nextqa_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    for q, options, answer in nextqa_sample:
        caption = f"{norm_q(q)[:-1]} while {options[answer].strip()}."
        seq = b.caption(caption)
        tokens, vs = video_seq(tok, ids, INSTR["caption"], f"\nDescription: {caption}\n")
        span = first_after(tokens, ids["description"], vs + T) + 1
        check(seq, (tokens, vs, span))
        assert tok.decode(seq.tokens[span:-1]) == f": {caption}\n" and seq.tokens[-1] == ids["eos"]

        open_answer = options[answer].strip()
        seq = b.openqa(q, open_answer)
        tokens, vs = video_seq(tok, ids, INSTR["openqa"], f"Question: {norm_q(q)}\nAnswer: {open_answer}\n")
        span = first_after(tokens, ids["answer"], vs + T) + 1
        check(seq, (tokens, vs, span))
        assert tok.decode(seq.tokens[span:-1]) == f": {open_answer}\n"

        for k in (0, answer, 4):
            seq = b.vaq(q, options, k)
            exp = expect_vaq(tok, ids, q, options, k)
            check(seq, exp)
            assert tok.decode(seq.tokens[exp[2]:-1]) == f": {norm_q(q)}"
            assert tok.decode(seq.tokens[:exp[1]]).endswith("Predict the question based on the video and answer.\nVideo:")

            seq = b.qav(q, options, k)
            exp = expect_qav(tok, ids, q, options, k)
            check(seq, exp)
            # the video slot is at the end, EOS right after it; no separator
            assert seq.tokens[-T - 1:] == [VIDEO] * T + [ids["eos"]] and seq.span_start == len(seq.tokens) - T - 1
            assert tok.decode(seq.tokens[1:exp[1]]).endswith(f"The correct choice is ({'ABCDE'[k]})\nVideo:")


def test_tvqa_sequences_every_task(toks, kind, tvqa_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    dialogue = " (Sheldon:) I'll send an email. (Leonard:) To whom?"
    for q, options in tvqa_sample:
        for d in (None, dialogue):
            for k in range(5):
                seq = b.mcqa(q, options, k, style=TVQA, dialogue=d)
                check(seq, expect_tvqa(tok, ids, q, options, k, d))
                # the last 4 tokens: "(", letter, ")", EOS
                last4 = seq.tokens[-4:]
                assert last4[0] == ids["open_paren"] and last4[2:] == [ids["close_paren"], ids["eos"]]
                assert tok.decode(last4[:3]).strip() == f"({'ABCDE'[k]})"
                check(b.vaq(q, options, k, style=TVQA, dialogue=d),
                      expect_vaq(tok, ids, q, options, k, d, tvqa=True))
                check(b.qav(q, options, k, style=TVQA, dialogue=d),
                      expect_qav(tok, ids, q, options, k, d, tvqa=True))
            seq = b.mcqa(q, options, 0, style=TVQA, dialogue=d)
            assert tok.decode(seq.tokens[1:seq.video_start]) == INSTR["tvqa"] + "Video:"
            text = tok.decode(seq.tokens[seq.video_start + T + 1:])
            assert ("Dialogue:" in text) == (d is not None)
            if d is not None:  # two spaces after the colon: D starts with the space before its first line
                assert "Dialogue:  (Sheldon:) I'll send an email. (Leonard:) To whom?\n" in text
    # a dialogue without the TVQA style is refused, never silently dropped
    with pytest.raises(PromptError, match="needs the dialogue prompt style"):
        b.mcqa(*tvqa_sample[0], 0, dialogue=dialogue)


# ---- TVQA dialogue: which subtitle lines (docs/prompts.md) ----

SRT = """1
00:00:01,000 --> 00:00:03,000
Before the clip.

2
00:00:02,000 --> 00:00:05,000
(Sheldon:) Starts before,
ends at a.

3
00:00:03,500 --> 00:00:04,999
Ends at 4.999.

4
00:00:06,100 --> 00:00:07,900
Inside.

5
00:00:08,000 --> 00:00:10,999
Ends at 10.999.

6
00:00:09,000 --> 00:00:11,200
Starts inside, ends after.

7
00:00:09,500 --> 00:00:10,000
Ends exactly at b.

8
00:01:02,000 --> 00:01:05,000
A minute later.

"""


def test_tvqa_dialogue_lines_by_end_second(tmp_path):
    (tmp_path / "tvqa" / "tvqa_subtitles").mkdir(parents=True)
    (tmp_path / "tvqa" / "tvqa_subtitles" / "vid_a.srt").write_text(SRT, encoding="utf-8")
    qs = [("q1", "4.6-10.4"),    # clip seconds [5, 10]
          ("q2", "NaN-NaN"),     # every entry
          ("q3", "20.0-30.0"),   # no entry ends in [20, 30]
          ("q4", "4.5-10.5"),    # round half to even: [4, 10]
          ("q5", "62.2-64.7")]   # [62, 65]: minutes count
    with open(tmp_path / "tvqa" / "tvqa_val.jsonl", "w") as f:
        for qid, ts in qs:
            f.write(json.dumps({"q": "what?", **{f"a{i}": str(i) for i in range(5)}, "answer_idx": 0,
                                "vid_name": "vid_a", "ts": ts, "qid": qid, "show_name": "x"}) + "\n")
    got = tvqa_dialogues(tmp_path, "val")
    assert got == {
        "q1": " (Sheldon:) Starts before, ends at a. Inside. Ends at 10.999. Ends exactly at b.",
        "q2": " Before the clip. (Sheldon:) Starts before, ends at a. Ends at 4.999. Inside. Ends at 10.999."
              " Starts inside, ends after. Ends exactly at b. A minute later.",
        "q3": None,
        "q4": " (Sheldon:) Starts before, ends at a. Ends at 4.999. Inside. Ends at 10.999. Ends exactly at b.",
        "q5": " A minute later.",
    }


# ---- --truncate_dialogue ----

def test_truncate_dialogue_cuts_the_dialogue_end_only(toks, kind, tvqa_sample):
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    q, options = tvqa_sample[0]
    d = " " + " ".join(f"(Speaker {i}:) This is subtitle line number {i}." for i in range(12))
    seg = tok.encode(f"Dialogue: {d}\n")
    for k in (0, 3):
        whole, vs, _ = expect_tvqa(tok, ids, q, options, k, d)
        bare, _, _ = expect_tvqa(tok, ids, q, options, k, None)
        rest = len(bare)
        assert len(whole) == rest + len(seg)
        for L in (len(whole) + 5, len(whole), len(whole) - 1, rest + 7, rest + 1, rest):
            seq = b.mcqa(q, options, k, style=TVQA, dialogue=d, max_len=L)
            keep = min(len(seg), L - rest)
            want = bare[:vs + T + 1] + seg[:keep] + bare[vs + T + 1:]
            assert seq.tokens == want, L
            assert len(seq) == min(L, len(whole)) and seq.n_cut == len(seg) - keep
            assert seq.span_start == len(seq) - 4 and seq.tokens[-4:] == whole[-4:]
        # no max_len: never cut
        assert b.mcqa(q, options, k, style=TVQA, dialogue=d).tokens == whole
        # vaq and qav follow the same cut
        qav_dialogue_at = 1 + len(tok.encode(INSTR["tvqa_qav"]))
        for build, expect, i in ((b.vaq, expect_vaq, vs + T + 1), (b.qav, expect_qav, qav_dialogue_at)):
            full = expect(tok, ids, q, options, k, d, tvqa=True)[0]
            assert full[i:i + len(seg)] == seg  # where the dialogue segment starts
            seq = build(q, options, k, style=TVQA, dialogue=d, max_len=len(full) - 9)
            assert len(seq) == len(full) - 9 and seq.n_cut == 9
            assert full[:i] + seg[:-9] + full[i + len(seg):] == seq.tokens
            assert build(q, options, k, style=TVQA, dialogue=d, max_len=len(full)).n_cut == 0


def test_truncate_dialogue_leaves_a_prompt_that_cannot_fit_whole(toks, kind, tvqa_sample):
    """A prompt longer than max_len even with no dialogue at all is not cut: it stays whole, dialogue
    included, and is not counted as cut (it counts as longer than max_seq_len instead)."""
    tok, ids = toks[kind], IDS[kind]
    b = PromptBuilder(tok, T)
    q, options = tvqa_sample[1]
    d = " (Gina:) Hi. (Castle:) Hello."
    whole = expect_tvqa(tok, ids, q, options, 2, d)[0]
    rest = len(expect_tvqa(tok, ids, q, options, 2, None)[0])
    seq = b.mcqa(q, options, 2, style=TVQA, dialogue=d, max_len=rest - 1)
    assert seq.tokens == whole and seq.n_cut == 0


# ---- the README's count of long NExT-QA val prompts ----

def longest_option_length(tok, ids, q, options):
    return max(len(expect_mcqa(tok, ids, q, options, k)[0]) for k in range(5))


def test_nextqa_val_prompts_longer_than_128(toks, nextqa_rows):
    """The measure evaluation reports: the longest option's full mcqa sequence (T = 10). Llama-2: exactly
    1 of 4996 (130 tokens, 5907839036_3); Llama-3: none (longest 108). The README states the Llama-2 count."""
    measured = {}
    for kind in ("llama2", "llama3"):
        tok, ids = toks[kind], IDS[kind]
        b = PromptBuilder(tok, T)
        lengths = {}
        for r in nextqa_rows:
            q, options = r["question"], [r[f"a{i}"] for i in range(5)]
            n = longest_option_length(tok, ids, q, options)
            assert max(len(s) for s in b.mcqa_options(q, options)) == n, (r["video"], r["qid"])
            lengths[f"{r['video']}_{r['qid']}"] = n
        measured[kind] = {k: n for k, n in lengths.items() if n > 128}, max(lengths.values())
    assert len(nextqa_rows) == 4996
    assert measured["llama2"] == ({"5907839036_3": 130}, 130)
    assert measured["llama3"] == ({}, 108)
    readme = (REPO / "README.md").read_text()
    m = re.search(r"Llama-2,\s+(\d+) of the (\d+) NExT-QA val questions (?:is|are) longer than (\d+) tokens", readme)
    assert m, "README no longer states how many NExT-QA val prompts are longer than 128 tokens"
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (1, 4996, 128)
