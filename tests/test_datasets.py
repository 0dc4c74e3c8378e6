"""Benchmark readers (dataloader/{nextqa,star,tvqa,egoschema,registry}.py) on the real public files of
tests/fixtures, with generated features whose rows encode their own index."""
import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from dataloader import benchmarks
from dataloader.base import DataError
from dataloader.benchmarks import build_mcqa_dataset
from text.prompts import PromptBuilder
from toyworld.fixtures import fixtures_dir
from util.errors import ConfigError, MissingFileError

FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES

NEXTQA_CSV = os.path.join(FIX, "nextqa", "val.csv")
EGO_SAMPLE = os.path.join(FIX, "egoschema", "questions_sample_617b469.json")
EGO_ANSWERS = os.path.join(FIX, "egoschema", "subset_answers.json")
TVQA_TEST = os.path.join(FIX, "tvqa", "tvqa_test_public.jsonl")
LETTERS = "ABCDE"


# ---- helpers ----

def index_feats(n: int, dtype=torch.float16) -> torch.Tensor:
    """[n, 768] rows whose direction encodes the row index (survives L2 normalisation)."""
    x = torch.zeros(n, 768)
    x[:, 0] = 1.0
    x[:, 1] = torch.arange(n, dtype=torch.float32)
    return x.to(dtype)


def decode_rows(v: torch.Tensor):
    """Fitted video [T, 768] -> row indices (None for zero padding rows)."""
    return [None if float(r[0]) == 0 else round(float(r[1] / r[0])) for r in v]


def expected_rows(first: int, last: int, T: int):
    n = last - first + 1
    if n > T:
        return [first + math.floor(j * n / T) for j in range(T)]
    return list(range(first, last + 1)) + [None] * (T - n)


@pytest.fixture(scope="session")
def tok():
    from text.tokenizer import load_tokenizer
    return load_tokenizer(os.path.join(FIX, "llama2", "tokenizer.model"))


@pytest.fixture(scope="session")
def builder(tok):
    return PromptBuilder(tok, max_feats=10)


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def nextqa_rows(k=None):
    with open(NEXTQA_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:] if k is None else rows[1:1 + k]


# ---- NExT-QA ----

@pytest.fixture(scope="module")
def nextqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    os.makedirs(root / "nextqa")
    shutil.copy(NEXTQA_CSV, root / "nextqa" / "val.csv")
    header, rows = nextqa_rows()
    g = torch.Generator().manual_seed(0)
    vids = sorted({r[0] for r in rows})
    feats = {v: torch.randn(4 + i % 20, 768, generator=g).half() for i, v in enumerate(vids)}
    torch.save(feats, root / "nextqa" / "clipvitl14.pth")
    return root


def test_nextqa_real_val(nextqa_root, builder):
    ds = build_mcqa_dataset("nextqa", nextqa_root, "val", builder)
    assert len(ds) == 4996 and ds.n_skipped == 0
    header, rows = nextqa_rows()
    col = {k: i for i, k in enumerate(header)}
    for r, row in zip(ds.records, rows):
        assert r.qid == f"{row[col['video']]}_{row[col['qid']]}" and r.vid == row[col["video"]]
        assert r.answer == int(row[col["answer"]]) and r.qtype == row[col["type"]]
        assert r.options == [row[col[f"a{i}"]] for i in range(5)]  # as given, whitespace included
        assert r.clip is None and r.dialogue is None
    assert len({r.qid for r in ds.records}) == 4996  # qid alone repeats across videos
    assert len({row[col["qid"]] for row in rows}) < 4996
    assert " oven" in [o for r in ds.records for o in r.options]  # leading space kept
    groups = {}
    for r in ds.records:
        for b in benchmarks.get("nextqa").type_groups(r.qtype):
            groups[b] = groups.get(b, 0) + 1
    assert groups["C"] == groups["CW"] + groups["CH"] == 2607
    assert groups["T"] == groups["TN"] + groups["TC"] + groups["TP"] == 1612
    assert groups["D"] == groups["DL"] + groups["DC"] + groups["DO"] == 777
    it = ds[0]
    assert it.video.shape == (10, 768) and len(it.seqs) == 5


def test_nextqa_every_val_prompt_keeps_its_scored_span(nextqa_root, builder, tok):
    ds = build_mcqa_dataset("nextqa", nextqa_root, "val", builder)
    letter_ids = [tok.encode(f"({L})") for L in LETTERS]
    assert all(len(ids) == 3 for ids in letter_ids)
    over = 0
    longest = 0
    for i in range(len(ds)):
        it = ds[i]
        assert len(it.seqs) == 5
        assert it.video.shape == (10, 768)
        for k, seq in enumerate(it.seqs):
            t = seq.tokens
            assert t[-1] == tok.eos_id
            assert t[-4:-1] == letter_ids[k], (it.record.qid, k)  # not truncated
            assert f"({LETTERS[k]})" in tok.decode(t[seq.span_start:-1])
            assert seq.span_start < len(t) - 3
        n = max(len(s) for s in it.seqs)
        longest = max(longest, n)
        over += n > 128
    assert (over, longest) == (1, 130)  # what the README states for Llama-2 (5907839036_3)


def test_nextqa_missing_features_error_and_skip(tmp_path, builder):
    header, rows = nextqa_rows(30)
    write_csv(tmp_path / "nextqa" / "val.csv", header, rows)
    vids = sorted({r[0] for r in rows})
    gone = vids[0]
    torch.save({v: index_feats(12) for v in vids[1:]}, tmp_path / "nextqa" / "clipvitl14.pth")
    n_gone = sum(r[0] == gone for r in rows)
    with pytest.raises(DataError) as e:
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    first = next(r for r in rows if r[0] == gone)
    assert f"{gone}_{first[6]}" in str(e.value) and f"{n_gone} have no features" in str(e.value)
    ds = build_mcqa_dataset("nextqa", tmp_path, "val", builder, skip_missing=True)
    assert ds.n_skipped == n_gone and len(ds) == 30 - n_gone
    assert all(r.vid != gone for r in ds.records)
    assert len(ds.skipped) == n_gone


def test_nextqa_integer_feature_keys_and_wrong_width(tmp_path, builder):
    header, rows = nextqa_rows(5)
    write_csv(tmp_path / "nextqa" / "val.csv", header, rows)
    vids = sorted({r[0] for r in rows})
    torch.save({int(v): index_feats(12) for v in vids}, tmp_path / "nextqa" / "clipvitl14.pth")
    ds = build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    assert len(ds) == 5
    bad = {v: index_feats(12) for v in vids}
    bad[vids[-1]] = torch.zeros(12, 512)
    torch.save(bad, tmp_path / "nextqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=f"'{vids[-1]}'.*\\[12, 512\\]") as e:
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    assert "clipvitl14.pth" in str(e.value)


def test_nextqa_missing_option_column_and_bad_answer(tmp_path, builder):
    header, rows = nextqa_rows(5)
    torch.save({r[0]: index_feats(4) for r in rows}, tmp_path / "nextqa_feats.pth")
    write_csv(tmp_path / "nextqa" / "val.csv", header[:-1], [r[:-1] for r in rows])
    shutil.copy(tmp_path / "nextqa_feats.pth", tmp_path / "nextqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=r"val\.csv:1: missing column\(s\) a4"):
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    short = [list(r) for r in rows]
    short[2] = short[2][:-1]  # a row without its a4 field
    write_csv(tmp_path / "nextqa" / "val.csv", header, short)
    with pytest.raises(DataError, match=rf"val\.csv:4: question {rows[2][6]}: missing 'a4'"):
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    bad = [list(r) for r in rows]
    bad[1][5] = "7"
    write_csv(tmp_path / "nextqa" / "val.csv", header, bad)
    with pytest.raises(DataError, match=rf"val\.csv:3: question {rows[1][0]}_{rows[1][6]}: answer 7"):
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)


# ---- STAR ----

def star_item(qid, vid, start, end, answer, choices=("a cup", "the door", "a book", "the laptop"),
              order=(0, 1, 2, 3)):
    return {"question_id": qid, "question": "What did the person take?", "video_id": vid,
            "start": start, "end": end, "answer": answer,
            "choices": [{"choice_id": i, "choice": choices[i]} for i in order]}


def write_star(root, items, feats):
    os.makedirs(root / "star", exist_ok=True)
    with open(root / "star" / "STAR_val.json", "w") as f:
        json.dump(items, f)
    torch.save(feats, root / "star" / "clipvitl14.pth")


def test_star_clip_seconds_answers_and_types(tmp_path, builder, tok):
    items = [star_item("Interaction_T1_13", "V1", 1.4, 3.6, "the door"),
             star_item("Sequence_T3_7", "V1", 2.5, 5.5, "a book", order=(3, 1, 0, 2)),  # round half even
             star_item("Prediction_T4_2", "V2", 0.0, 30.2, "the laptop"),
             star_item("Feasibility_T6_9", "V2", 7.0, 7.2, "a cup")]
    write_star(tmp_path, items, {"V1": index_feats(20), "V2": index_feats(40)})
    ds = build_mcqa_dataset("star", tmp_path, "val", builder)
    assert [r.answer for r in ds.records] == [1, 2, 3, 0]
    assert ds.records[1].options == ["a cup", "the door", "a book", "the laptop"]  # by choice_id
    assert [r.qtype for r in ds.records] == ["Interaction", "Sequence", "Prediction", "Feasibility"]
    assert [r.clip for r in ds.records] == [(1, 4), (2, 6), (0, 30), (7, 7)]
    for r in ds.records:
        assert decode_rows(ds.video(r)) == expected_rows(*r.clip, 10)
        assert benchmarks.get("star").type_groups(r.qtype) == [r.qtype]
    assert decode_rows(ds.video(ds.records[0]))[:5] == [1, 2, 3, 4, None]
    it = ds[0]
    assert len(it.seqs) == 4
    text = tok.decode(it.seqs[3].tokens[it.seqs[3].video_start + 11:])
    assert "Answer: The answer is (D)" in text and "(E)" not in text


def test_star_answer_not_among_choices(tmp_path, builder):
    items = [star_item("Interaction_T1_1", "V1", 0, 3, "a cup"),
             star_item("Sequence_T1_2", "V1", 0, 3, "a spoon")]
    write_star(tmp_path, items, {"V1": index_feats(5)})
    with pytest.raises(DataError, match=r"STAR_val\.json\[1\]: question Sequence_T1_2: answer 'a spoon'"):
        build_mcqa_dataset("star", tmp_path, "val", builder)


def test_star_missing_key_and_clip_outside_video(tmp_path, builder):
    items = [star_item("Interaction_T1_1", "V1", 0, 3, "a cup"), star_item("Sequence_T1_2", "V1", 0, 3, "a cup")]
    del items[1]["video_id"]
    write_star(tmp_path, items, {"V1": index_feats(5)})
    with pytest.raises(DataError, match=r"STAR_val\.json\[1\]: question Sequence_T1_2: missing 'video_id'"):
        build_mcqa_dataset("star", tmp_path, "val", builder)
    items = [star_item("Interaction_T1_1", "V1", 0, 3, "a cup"),
             star_item("Sequence_T1_2", "V1", 9.0, 12.0, "a cup"),     # starts after the last row
             star_item("Sequence_T1_3", "V9", 0, 3, "a cup")]         # no features
    write_star(tmp_path, items, {"V1": index_feats(5)})
    with pytest.raises(DataError) as e:
        build_mcqa_dataset("star", tmp_path, "val", builder)
    assert "Sequence_T1_3" in str(e.value) and "Sequence_T1_2" in str(e.value)
    ds = build_mcqa_dataset("star", tmp_path, "val", builder, skip_missing=True)
    assert ds.n_skipped == 2 and [r.qid for r in ds.records] == ["Interaction_T1_1"]


# ---- TVQA ----

def srt_time(t):
    h, rem = divmod(int(round(t * 1000)), 3600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def write_srt(path, n_entries):
    """Entry k covers [5k, 5k+4] s and reads "(P{k}:) line {k}\\nmore {k}"."""
    with open(path, "w", encoding="utf-8") as f:
        for k in range(n_entries):
            f.write(f"{k + 1}\n{srt_time(5 * k)} --> {srt_time(5 * k + 4)}\n(P{k}:) line {k}\nmore {k}\n\n")


@pytest.fixture()
def tvqa_root(tmp_path):
    with open(TVQA_TEST, encoding="utf-8") as f:
        lines = [json.loads(next(f)) for _ in range(50)]
    lines[3]["ts"] = "NaN-NaN"
    os.makedirs(tmp_path / "tvqa" / "tvqa_subtitles")
    with open(tmp_path / "tvqa" / "tvqa_test_public.jsonl", "w", encoding="utf-8") as f:
        for x in lines:
            f.write(json.dumps(x) + "\n")
    feats = {}
    for x in lines:
        ts = x["ts"].split("-")
        end = 30.0 if ts[1] == "NaN" else float(ts[1])
        need = 3 * (round(end) + 1) + 4
        feats[x["vid_name"]] = index_feats(max(need, feats.get(x["vid_name"], torch.zeros(0)).shape[0]))
        write_srt(tmp_path / "tvqa" / "tvqa_subtitles" / f"{x['vid_name']}.srt", 30)
    torch.save(feats, tmp_path / "tvqa" / "clipvitl14.pth")
    return tmp_path, lines


def test_tvqa_real_test_questions_clips_3fps(tvqa_root, builder):
    root, lines = tvqa_root
    ds = build_mcqa_dataset("tvqa", root, "test_public", PromptBuilder(builder.tok, 200))
    assert len(ds) == 50 and ds.n_skipped == 0
    feats = torch.load(root / "tvqa" / "clipvitl14.pth")
    for r, x in zip(ds.records, lines):
        assert r.qid == str(x["qid"]) and r.vid == x["vid_name"] and r.answer is None
        assert r.options == [x[f"a{i}"] for i in range(5)] and r.question == x["q"]
        assert r.dialogue is None and benchmarks.get("tvqa").type_groups(r.qtype) == []
        rows = decode_rows(ds.video(r))
        if x["ts"] == "NaN-NaN":
            assert r.clip is None
            n = feats[r.vid].shape[0]
            assert rows[:n] == list(range(n)) and rows[n:] == [None] * (200 - n)
        else:
            s, e = map(float, x["ts"].split("-"))
            a, b = 3 * round(s), 3 * (round(e) + 1) - 1
            assert r.clip == (a, b)
            assert rows == expected_rows(a, b, 200)
    # first real question: ts "48.62-60.02" -> seconds 49..60 -> rows 147..182
    assert lines[0]["ts"] == "48.62-60.02" and ds.records[0].clip == (147, 182)
    ds10 = build_mcqa_dataset("tvqa", root, "test_public", builder)
    assert decode_rows(ds10.video(ds10.records[0])) == [147 + math.floor(j * 36 / 10) for j in range(10)]


def test_tvqa_subtitles(tvqa_root, builder, tok):
    root, lines = tvqa_root
    ds = build_mcqa_dataset("tvqa", root, "test_public", builder, sub=True)
    # ts [48.62, 60.02] -> clip seconds [49, 60]: entries 9, 10, 11 end at 49, 54, 59 (kept); entry 12
    # starts inside (60) but ends at 64 (left out); entry 8 ends at 44 (left out)
    assert ds.records[0].dialogue == "".join(f" (P{k}:) line {k} more {k}" for k in range(9, 12))
    assert ds.records[3].dialogue == "".join(f" (P{k}:) line {k} more {k}" for k in range(30))  # NaN-NaN
    it = ds[0]
    for k, seq in enumerate(it.seqs):
        text = tok.decode(seq.tokens[seq.video_start + 11:])
        assert text.startswith("Dialogue:  (P9:) line 9 more 9 (P10:)") and "more 11\n Question" in text  # own segment: SentencePiece word boundary
        assert "Question: Who does sheldon say" in text  # own segment; str.capitalize (docs/prompts.md)
        assert seq.span_start == len(seq.tokens) - 4
        assert tok.decode(seq.tokens[seq.span_start:-1]) == f"({LETTERS[k]})"
    os.remove(root / "tvqa" / "tvqa_subtitles" / f"{lines[7]['vid_name']}.srt")
    with pytest.raises(DataError) as e:
        build_mcqa_dataset("tvqa", root, "test_public", builder, sub=True)
    assert str(lines[7]["qid"]) in str(e.value) and f"{lines[7]['vid_name']}.srt" in str(e.value)
    ds = build_mcqa_dataset("tvqa", root, "test_public", builder)  # no sub: not needed
    assert len(ds) == 50


@pytest.mark.parametrize("ts", ["12.5", "a-b", "5-2", "NaN-4", "", "1-2-3"])
def test_tvqa_malformed_ts(tvqa_root, builder, ts):
    root, lines = tvqa_root
    lines[5]["ts"] = ts
    with open(root / "tvqa" / "tvqa_test_public.jsonl", "w", encoding="utf-8") as f:
        for x in lines:
            f.write(json.dumps(x) + "\n")
    with pytest.raises(DataError, match=rf"tvqa_test_public\.jsonl:6: question {lines[5]['qid']}: malformed ts"):
        build_mcqa_dataset("tvqa", root, "test_public", builder)


def test_tvqa_answers_missing_option_and_features(tvqa_root, builder):
    root, lines = tvqa_root
    for i, x in enumerate(lines):
        x["answer_idx"] = i % 5
    del lines[9]["a2"]
    path = root / "tvqa" / "tvqa_val.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError, match=rf"tvqa_val\.jsonl:10: question {lines[9]['qid']}: missing 'a2'"):
        build_mcqa_dataset("tvqa", root, "val", builder)
    lines[9]["a2"] = "x"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ds = build_mcqa_dataset("tvqa", root, "val", builder, train=True)
    assert [r.answer for r in ds.records] == [i % 5 for i in range(50)]
    del lines[4]["answer_idx"]  # val questions need their answer
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError, match=rf"tvqa_val\.jsonl:5: question {lines[4]['qid']}: missing answer"):
        build_mcqa_dataset("tvqa", root, "val", builder)
    feats = torch.load(root / "tvqa" / "clipvitl14.pth")
    del feats[lines[0]["vid_name"]]
    torch.save(feats, root / "tvqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=str(lines[0]["qid"])):
        build_mcqa_dataset("tvqa", root, "test_public", builder)
    ds = build_mcqa_dataset("tvqa", root, "test_public", builder, skip_missing=True)
    n = sum(x["vid_name"] == lines[0]["vid_name"] for x in lines)
    assert ds.n_skipped == n and len(ds) == 50 - n


# ---- EgoSchema ----

def ego_question(uid, text="What is c doing in the video."):
    return {"q_uid": uid, "google_drive_id": "x", "question": text,
            **{f"option {i}": f"option text {i} of {uid[:8]}" for i in range(5)}}


@pytest.fixture()
def ego_root(tmp_path):
    os.makedirs(tmp_path / "egos" / "features")
    with open(EGO_SAMPLE) as f:
        sample = json.load(f)
    with open(EGO_ANSWERS) as f:
        answers = json.load(f)
    shutil.copy(EGO_ANSWERS, tmp_path / "egos" / "subset_answers.json")
    for q in sample:
        np.save(tmp_path / "egos" / "features" / f"{q['q_uid']}.npy", np.random.rand(90, 768).astype(np.float16))
    return tmp_path, sample, answers


def test_egoschema_official_layout(ego_root, builder, tok):
    root, sample, answers = ego_root
    (root / "egos" / "questions.json").write_text(json.dumps(sample))
    ds = build_mcqa_dataset("egos", root, "test", builder)
    assert [r.qid for r in ds.records] == [q["q_uid"] for q in sample]
    assert all(r.answer is None for r in ds.records)
    assert ds.records[0].options == [sample[0][f"option {i}"] for i in range(5)]
    assert ds[0].video.shape == (10, 768)
    # the sample has no answered question: val is empty, which is an error
    with pytest.raises(DataError, match="none of the 20 questions"):
        build_mcqa_dataset("egoschema", root, "val", builder)
    answered = sorted(answers)[:3]
    qs = sample + [ego_question(u) for u in answered]
    (root / "egos" / "questions.json").write_text(json.dumps(qs))
    for u in answered:
        np.save(root / "egos" / "features" / f"{u}.npy", index_feats(7).numpy())
    val = build_mcqa_dataset("egos", root, "val", builder)
    assert [r.qid for r in val.records] == answered
    assert [r.answer for r in val.records] == [answers[u] for u in answered]
    assert decode_rows(val.video(val.records[0])) == list(range(7)) + [None] * 3
    test = build_mcqa_dataset("egos", root, "test", builder)
    assert len(test) == 23 and [r.answer for r in test.records[20:]] == [answers[u] for u in answered]
    # EgoSchema questions ending in "." get no "?"
    seq = val[0].seqs[0]
    assert "Question: What is c doing in the video.\nChoices:" in tok.decode(seq.tokens[seq.video_start + 11:])
    seq = test[0].seqs[0]
    assert "its significance within the video.\nChoices: \n(A) C stops" in tok.decode(seq.tokens[seq.video_start + 11:])


def test_egoschema_csv_preferred_and_errors(ego_root, builder):
    root, sample, answers = ego_root
    (root / "egos" / "questions.json").write_text(json.dumps(sample))
    uids = [q["q_uid"] for q in sample[:4]]
    header = ["uid", "question", "a0", "a1", "a2", "a3", "a4", "answer"]
    write_csv(root / "egos" / "val.csv", header,
              [[u, "why?", "p", "q", "r", "s", " t ", str(i)] for i, u in enumerate(uids)])
    ds = build_mcqa_dataset("egos", root, "val", builder)
    assert [r.qid for r in ds.records] == uids and [r.answer for r in ds.records] == [0, 1, 2, 3]
    assert ds.records[0].options[4] == " t "
    write_csv(root / "egos" / "test.csv", header[:-1], [[u, "why?", "p", "q", "r", "s", "t"] for u in uids])
    assert [r.answer for r in build_mcqa_dataset("egos", root, "test", builder).records] == [None] * 4
    write_csv(root / "egos" / "test.csv", header, [[u, "why?", "p", "q", "r", "s", "t", ""] for u in uids])
    assert [r.answer for r in build_mcqa_dataset("egos", root, "test", builder).records] == [None] * 4
    write_csv(root / "egos" / "val.csv", header[:6] + header[7:],
              [[u, "why?", "p", "q", "r", "s", "0"] for u in uids])
    with pytest.raises(DataError, match=r"val\.csv:1: missing column\(s\) a4"):
        build_mcqa_dataset("egos", root, "val", builder)
    write_csv(root / "egos" / "val.csv", header, [[u, "why?", "p", "q", "r", "s", "t", "1"] for u in uids])
    os.remove(root / "egos" / "features" / f"{uids[2]}.npy")
    with pytest.raises(DataError, match=uids[2]):
        build_mcqa_dataset("egos", root, "val", builder)
    ds = build_mcqa_dataset("egos", root, "val", builder, skip_missing=True)
    assert ds.n_skipped == 1 and ds.skipped == [uids[2]] and len(ds) == 3
    np.save(root / "egos" / "features" / f"{uids[2]}.npy", np.zeros((8, 1024), np.float32))
    with pytest.raises(DataError, match=rf"{uids[2]}.npy: features of video '{uids[2]}' have shape \[8, 1024\]"):
        build_mcqa_dataset("egos", root, "val", builder)


def test_egoschema_official_missing_option(ego_root, builder):
    root, sample, answers = ego_root
    del sample[4]["option 3"]
    (root / "egos" / "questions.json").write_text(json.dumps(sample))
    with pytest.raises(DataError, match=rf"questions\.json\[4\]: question {sample[4]['q_uid']}: missing 'option 3'"):
        build_mcqa_dataset("egos", root, "test", builder)


# ---- registry ----

def test_benchmark_table(tmp_path, builder):
    assert {n: b.n_options for n, b in benchmarks.BENCHMARKS.items() if b.kind == "mcqa"} == \
        {"nextqa": 5, "star": 4, "tvqa": 5, "egos": 5}
    assert [n for n, b in benchmarks.BENCHMARKS.items() if b.kind == "generate"] == ["mvbench", "msrvtt", "vatex"]
    assert benchmarks.get("EgoSchema").name == "egos" and benchmarks.get("next-qa").name == "nextqa"
    nq = benchmarks.get("nextqa").type_groups
    assert nq("TP") == ["T", "TP"] and nq("DO") == ["D", "DO"] and nq("CH") == ["C", "CH"]
    assert benchmarks.get("star").type_groups("Feasibility") == ["Feasibility"]
    assert benchmarks.get("tvqa").type_groups("") == [] and benchmarks.get("egos").type_groups("") == []
    with pytest.raises(ConfigError, match="unknown dataset 'activitynet'.*nextqa"):
        build_mcqa_dataset("activitynet", tmp_path, "val", builder)
    with pytest.raises(ConfigError, match="MSR-VTT is a generation benchmark"):
        build_mcqa_dataset("msrvtt", tmp_path, "val", builder)
    with pytest.raises(ConfigError, match="unknown dataset"):
        benchmarks.get("foo").type_groups("CW")
    with pytest.raises(MissingFileError, match="nextqa.val.csv"):
        build_mcqa_dataset("nextqa", tmp_path, "val", builder)
    with pytest.raises(ConfigError, match="subtitles"):
        build_mcqa_dataset("nextqa", tmp_path, "val", builder, sub=True)
