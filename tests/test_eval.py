"""eval.py end to end on tiny models in Meta's on-disk format with the real tokenizers and real
NExT-QA / EgoSchema question text: outputs, 1 process == torchrun 2 processes, packed == full,
bad input named in one line (checked before the backbone loads), predictions streamed to disk, and
no silent wrong result (non-finite inputs or scores, checkpoint settings that do not match the run)."""
import argparse
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llama.adapter import TOPAArgs, build_model
from llama.weights import load_meta_checkpoint
from text.tokenizer import load_tokenizer
from toyworld.fixtures import fixtures_dir
from toyworld.tiny import make_tiny_llama
from util.errors import CheckpointError, ConfigError, DataError, MissingFileError
from util.files import save_atomic

REPO = Path(__file__).resolve().parents[1]
FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES
N_NEXTQA = 24


def write_world(root: Path, kind: str = "llama2", n_shards: int = 1):
    """pretrained/<kind>/{tiny, tokenizer.model}, vqa_checkpoint/topa.pth, data/{nextqa, egos, textvid/memory.pkl}."""
    g = torch.Generator().manual_seed(0)
    llama3 = kind == "llama3"
    mdir = make_tiny_llama(root / "pretrained" / kind, Path(FIX) / kind / "tokenizer.model", dim=64, n_layers=2,
                           n_heads=4, n_kv_heads=2 if llama3 else None, rope_theta=500000.0 if llama3 else None,
                           llama2_style=not llama3, n_shards=n_shards, seed=1)
    tok = load_tokenizer(root / "pretrained" / kind / "tokenizer.model")
    margs = TOPAArgs.from_params_json(mdir / "params.json", adapter_len=10, max_feats=10, bias=3.0,
                                      vocab_size=tok.n_words, rope_theta=10000.0 if llama3 else None)
    model = build_model(margs, load_meta_checkpoint(mdir))
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "gate" in n else 0.05))
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 3, "scaler": None,
                 "args": argparse.Namespace(model="tiny")}, root / "vqa_checkpoint" / "topa.pth")
    data = root / "data"
    (data / "nextqa").mkdir(parents=True, exist_ok=True)
    with open(Path(FIX) / "nextqa" / "val.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for _, r in zip(range(N_NEXTQA), reader)]
        fields = reader.fieldnames
    with open(data / "nextqa" / "val.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    feats = {r["video"]: torch.randn(int(r["frame_count"]) % 17 + 4, 768, generator=g) for r in rows}
    torch.save(feats, data / "nextqa" / "clipvitl14.pth")
    answers = json.loads((Path(FIX) / "egoschema" / "subset_answers.json").read_text())
    qs = json.loads((Path(FIX) / "egoschema" / "questions_sample_617b469.json").read_text())
    egos = data / "egos"
    (egos / "features").mkdir(parents=True, exist_ok=True)
    uids = list(answers)[: len(qs)]
    with open(egos / "val.csv", "w", newline="") as f:  # real question text under answered uids
        w = csv.writer(f)
        w.writerow(["uid", "question"] + [f"a{i}" for i in range(5)] + ["answer"])
        for uid, q in zip(uids, qs):
            w.writerow([uid, q["question"]] + [q[f"option {i}"] for i in range(5)] + [answers[uid]])
            np.save(egos / "features" / f"{uid}.npy", torch.randn(90, 768, generator=g).numpy())
    (data / "textvid").mkdir(parents=True, exist_ok=True)
    torch.save(F.normalize(torch.randn(500, 768, generator=g), dim=-1).half(), data / "textvid" / "memory.pkl")
    return root


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w2"), "llama2", n_shards=2)


@pytest.fixture(scope="module")
def world3(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w3"), "llama3")


def eval_cmd(*extra, dataset="nextqa", llama3=False):
    cmd = ["--model", "tiny", "--max_seq_len", "128", "--batch_size", "5", "--max_feats", "10",
           "--adapter_len", "10", "--dataset", dataset, "--resume", "vqa_checkpoint/topa.pth", "--memory",
           "--precision", "fp32", "--device", "cpu", "--num_workers", "0"]
    cmd += (["--llama3", "--llama_model_path", "./pretrained/llama3/", "--rope_theta", "10000"] if llama3
            else ["--llama2", "--llama_model_path", "./pretrained/llama2/"])
    return cmd + list(extra)


def run_eval(cwd, args, torchrun=0):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
    p = subprocess.run(launcher + [str(REPO / "eval.py")] + args, cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    return p


def read_preds(path):
    return [json.loads(l) for l in open(path)]


def test_eval_outputs_and_torchrun_equality(world2):
    p = run_eval(world2, eval_cmd("--output_dir", "results/one"))
    assert p.returncode == 0, p.stderr[-3000:]
    one = read_preds(world2 / "results/one/predictions_nextqa_val.jsonl")
    assert len(one) == N_NEXTQA
    for r in one:
        assert {"video", "qid", "answer", "prediction", "scores"} <= set(r)
        assert len(r["scores"]) == 5 and r["prediction"] == int(np.argmin(r["scores"]))
    assert len({r["qid"] for r in one}) == N_NEXTQA  # video_qid ids are unique
    acc = json.loads((world2 / "results/one/accuracy_nextqa_val.json").read_text())["accuracy"]
    assert acc["total"]["total"] == N_NEXTQA
    assert acc["total"]["correct"] == sum(r["prediction"] == r["answer"] for r in one)
    assert sum(acc[g]["total"] for g in "CTD" if g in acc) == N_NEXTQA
    assert "total" in p.stdout
    # packed and full scoring agree, and so do the fused and the eager (reference) attention kernels
    p = run_eval(world2, eval_cmd("--output_dir", "results/eager", "--attn_impl", "eager"))
    assert p.returncode == 0, p.stderr[-3000:]
    eager = read_preds(world2 / "results/eager/predictions_nextqa_val.jsonl")
    assert np.abs(np.array([r["scores"] for r in one]) - np.array([r["scores"] for r in eager])).max() <= 1e-5
    p = run_eval(world2, eval_cmd("--output_dir", "results/full", "--scoring", "full"))
    assert p.returncode == 0, p.stderr[-3000:]
    full = read_preds(world2 / "results/full/predictions_nextqa_val.jsonl")
    assert np.abs(np.array([r["scores"] for r in one]) - np.array([r["scores"] for r in full])).max() <= 1e-5
    # torchrun with 2 processes (gloo): every question once, same predictions
    p = run_eval(world2, eval_cmd("--output_dir", "results/two"), torchrun=2)
    assert p.returncode == 0, p.stderr[-3000:]
    two = read_preds(world2 / "results/two/predictions_nextqa_val.jsonl")
    assert [r["qid"] for r in two] == [r["qid"] for r in one]
    assert [r["prediction"] for r in two] == [r["prediction"] for r in one]
    assert np.abs(np.array([r["scores"] for r in one]) - np.array([r["scores"] for r in two])).max() <= 1e-5


def test_eval_memory_and_checkpoint_matter(world2, tmp_path):
    """The flags reach the model: without --memory or with another checkpoint the scores move."""
    base = read_preds(world2 / "results/one/predictions_nextqa_val.jsonl") if \
        (world2 / "results/one/predictions_nextqa_val.jsonl").exists() else None
    if base is None:
        assert run_eval(world2, eval_cmd("--output_dir", "results/one")).returncode == 0
        base = read_preds(world2 / "results/one/predictions_nextqa_val.jsonl")
    args = [a for a in eval_cmd("--output_dir", "results/nomem") if a != "--memory"]
    p = run_eval(world2, args)
    assert p.returncode == 0, p.stderr[-3000:]
    nomem = read_preds(world2 / "results/nomem/predictions_nextqa_val.jsonl")
    assert np.abs(np.array([r["scores"] for r in base]) - np.array([r["scores"] for r in nomem])).max() > 1e-4
    # another checkpoint: the same file with visual_proj negated and every gate1 shifted by 1
    ck = torch.load(world2 / "vqa_checkpoint/topa.pth", weights_only=False)
    ck["model"] = {k: -v if k == "visual_proj.weight" else v + 1.0 if k.endswith(".gate1") else v
                   for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "other.pth")
    p = run_eval(world2, eval_cmd("--output_dir", "results/other") + ["--resume", str(tmp_path / "other.pth")])
    assert p.returncode == 0, p.stderr[-3000:]
    other = read_preds(world2 / "results/other/predictions_nextqa_val.jsonl")
    assert [r["qid"] for r in other] == [r["qid"] for r in base]
    assert np.abs(np.array([r["scores"] for r in base]) - np.array([r["scores"] for r in other])).max() > 1e-4


def test_egoschema_llama3(world3):
    p = run_eval(world3, eval_cmd("--output_dir", "results/egos", "--max_seq_len", "600", dataset="egos",
                                  llama3=True))
    assert p.returncode == 0, p.stderr[-3000:]
    preds = read_preds(world3 / "results/egos/predictions_egos_val.jsonl")
    assert len(preds) == 20 and all(len(r["scores"]) == 5 for r in preds)
    # each prediction is its lowest score; the accuracy is that of the answers this world wrote
    with open(world3 / "data/egos/val.csv", newline="") as f:
        answers = {r["uid"]: int(r["answer"]) for r in csv.DictReader(f)}
    assert sorted(r["qid"] for r in preds) == sorted(answers)
    assert all(r["prediction"] == int(np.argmin(r["scores"])) for r in preds)
    acc = json.loads((world3 / "results/egos/accuracy_egos_val.json").read_text())["accuracy"]["total"]
    assert acc["acc"] == pytest.approx(100 * np.mean([r["prediction"] == answers[r["qid"]] for r in preds]))
    # the shared-prefix scores of these long prompts are those of each option's whole sequence
    p = run_eval(world3, eval_cmd("--output_dir", "results/egos_full", "--max_seq_len", "600", "--scoring", "full",
                                  dataset="egos", llama3=True))
    assert p.returncode == 0, p.stderr[-3000:]
    full = read_preds(world3 / "results/egos_full/predictions_egos_val.jsonl")
    assert [r["qid"] for r in full] == [r["qid"] for r in preds]
    assert np.abs(np.array([r["scores"] for r in full]) - np.array([r["scores"] for r in preds])).max() <= 1e-4
    assert np.ptp(np.array([r["scores"] for r in preds])) > 0.1        # scores that tell options apart


def one_line_error(p, *needles):
    """The run failed with one error line on stderr (progress bars and the `note:` lines of the recorded
    settings check aside), no traceback, naming `needles`."""
    err = p.stderr.strip()
    assert p.returncode != 0, p.stdout[-2000:]
    lines = [seg for line in err.splitlines() for seg in line.split("\r")
             if seg.strip() and "%|" not in seg and not seg.startswith("note: ")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("eval.py: error: "), err[-3000:]
    for n in needles:
        assert n in lines[0], err
    return lines[0]


def test_bad_inputs_are_one_line_errors(world2, tmp_path):
    # memory of the wrong width
    torch.save(torch.randn(10, 512), tmp_path / "narrow.pkl")
    p = run_eval(world2, eval_cmd("--memory_path", str(tmp_path / "narrow.pkl"), "--output_dir", "results/x"))
    one_line_error(p, "narrow.pkl", "768")
    # wrong tokenizer / model path
    p = run_eval(world2, eval_cmd("--output_dir", "results/x") + ["--llama_model_path", "./nowhere/"])
    one_line_error(p, "nowhere")
    # Llama-3 flag with a SentencePiece tokenizer
    args = [a for a in eval_cmd("--output_dir", "results/x") if a != "--llama2"] + ["--llama3"]
    p = run_eval(world2, args)
    one_line_error(p, "sentencepiece")
    # checkpoint tensor of the wrong shape
    ck = torch.load(world2 / "vqa_checkpoint/topa.pth", weights_only=False)
    ck["model"]["temporal_emb.weight"] = torch.zeros(8, 64)
    torch.save(ck, tmp_path / "bad.pth")
    p = run_eval(world2, eval_cmd("--output_dir", "results/x") + ["--resume", str(tmp_path / "bad.pth")])
    one_line_error(p, "temporal_emb.weight", "bad.pth")
    # a question whose video has no features
    feats = torch.load(world2 / "data/nextqa/clipvitl14.pth")
    vid = sorted(feats)[0]
    del feats[vid]
    alt = tmp_path / "data"
    (alt / "nextqa").mkdir(parents=True)
    torch.save(feats, alt / "nextqa" / "clipvitl14.pth")
    (alt / "nextqa" / "val.csv").write_text((world2 / "data/nextqa/val.csv").read_text())
    p = run_eval(world2, [a for a in eval_cmd("--output_dir", "results/x", "--data_root", str(alt)) if a != "--memory"])
    one_line_error(p, "clipvitl14.pth", vid)



def test_egoschema_test_submission(world2):
    """--test on the official questions.json layout: one submission entry per question, no answers needed."""
    egos = world2 / "data" / "egos"
    qs = json.loads((Path(FIX) / "egoschema" / "questions_sample_617b469.json").read_text())
    (egos / "questions.json").write_text(json.dumps(qs))
    (egos / "subset_answers.json").write_text((Path(FIX) / "egoschema" / "subset_answers.json").read_text())
    g = torch.Generator().manual_seed(3)
    for q in qs:
        np.save(egos / "features" / f"{q['q_uid']}.npy", torch.randn(30, 768, generator=g).numpy())
    p = run_eval(world2, eval_cmd("--output_dir", "results/egos_test", "--test", "--max_seq_len", "600",
                                  dataset="egos"))
    assert p.returncode == 0, p.stderr[-3000:]
    sub = json.loads((world2 / "results/egos_test/submission_egos_test.json").read_text())
    assert sorted(sub) == sorted(q["q_uid"] for q in qs)
    assert all(isinstance(v, int) and 0 <= v < 5 for v in sub.values())
    preds = read_preds(world2 / "results/egos_test/predictions_egos_test.jsonl")
    assert {r["qid"]: r["prediction"] for r in preds} == sub and all(r["answer"] is None for r in preds)


def test_accuracy_per_type_hand_checked():
    from dataloader.benchmarks import get
    from engine.scoring import accuracy
    preds = [  # STAR: 2/3 Interaction, 0/1 Sequence, 1/1 Feasibility
        {"type": "Interaction", "answer": 0, "prediction": 0}, {"type": "Interaction", "answer": 1, "prediction": 1},
        {"type": "Interaction", "answer": 2, "prediction": 3}, {"type": "Sequence", "answer": 0, "prediction": 2},
        {"type": "Feasibility", "answer": 3, "prediction": 3}]
    acc = accuracy(preds, get("star").type_groups)
    assert (acc["total"]["correct"], acc["total"]["total"]) == (3, 5)
    assert acc["Interaction"]["acc"] == pytest.approx(200 / 3) and acc["Sequence"]["acc"] == 0.0
    assert acc["Feasibility"]["acc"] == 100.0 and "Prediction" not in acc
    nq = [{"type": "CW", "answer": 1, "prediction": 1}, {"type": "TN", "answer": 1, "prediction": 0},
          {"type": "TC", "answer": 2, "prediction": 2}, {"type": "DL", "answer": 0, "prediction": None}]
    acc = accuracy(nq, get("nextqa").type_groups)
    assert acc["C"]["acc"] == 100.0 and acc["T"]["acc"] == 50.0 and acc["TN"]["acc"] == 0.0
    assert acc["D"]["total"] == 1 and acc["total"]["correct"] == 2


# ---------------------------------------------------------------- no silent wrong results (issue 12)

eval_py = importlib.import_module("eval")


def eval_main(cwd, args, monkeypatch):
    """eval.py's main in this process (for errors raised before any scoring)."""
    monkeypatch.chdir(cwd)
    return eval_py.main(eval_py.get_args(args))


def garbage_backbone(root: Path) -> str:
    """A model folder whose tokenizer and params.json are fine and whose shard is not a checkpoint: a run
    that names anything else in its error stopped before reading the backbone."""
    g = root / "pretrained" / "garbage"
    if not g.exists():
        (g / "tiny").mkdir(parents=True)
        shutil.copy(root / "pretrained" / "llama2" / "tokenizer.model", g / "tokenizer.model")
        shutil.copy(root / "pretrained" / "llama2" / "tiny" / "params.json", g / "tiny" / "params.json")
        (g / "tiny" / "consolidated.00.pth").write_bytes(b"not a checkpoint")
    return "./pretrained/garbage/"


def saved_checkpoint(world, tmp_path, name, edit=None, args=None):
    ck = torch.load(world / "vqa_checkpoint/topa.pth", weights_only=False)
    if edit is not None:
        edit(ck["model"])
    if args is not None:
        ck["args"] = argparse.Namespace(**args)
    torch.save(ck, tmp_path / name)
    return str(tmp_path / name)


def strict_json_lines(path):
    """Every line parses as JSON without NaN / Infinity."""
    def no_constants(c):
        raise ValueError(f"{path}: {c} in a predictions file")
    return [json.loads(line, parse_constant=no_constants) for line in open(path)]


def test_inputs_are_checked_before_the_backbone_loads(world2, tmp_path, monkeypatch):
    """Outputs, annotations, features, memory and the checkpoint (tensors, recorded settings) are checked
    first: with an unreadable backbone each error names its own culprit, not the backbone."""
    base = eval_cmd("--output_dir", str(tmp_path / "out")) + ["--llama_model_path", garbage_backbone(world2)]
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth"):   # nothing else wrong: backbone reached
        eval_main(world2, base, monkeypatch)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"--output_dir .*a_file/out: cannot write there"):
        eval_main(world2, base + ["--output_dir", str(tmp_path / "a_file" / "out")], monkeypatch)
    with pytest.raises(MissingFileError, match=r"memory file not found: .*nowhere\.pkl"):
        eval_main(world2, base + ["--memory_path", str(tmp_path / "nowhere.pkl")], monkeypatch)
    with pytest.raises(MissingFileError, match=r"nowhere/nextqa/val\.csv"):
        eval_main(world2, base + ["--data_root", str(tmp_path / "nowhere")], monkeypatch)
    # a NaN feature row
    alt = tmp_path / "data"
    (alt / "nextqa").mkdir(parents=True)
    shutil.copy(world2 / "data/nextqa/val.csv", alt / "nextqa" / "val.csv")
    feats = torch.load(world2 / "data/nextqa/clipvitl14.pth")
    vid = sorted(feats)[3]
    feats[vid][2, 100] = float("nan")
    torch.save(feats, alt / "nextqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=rf"clipvitl14\.pth: features of video '{vid}' .*nan.* row 2"):
        eval_main(world2, base + ["--data_root", str(alt)], monkeypatch)
    # checkpoint: an Inf tensor, a truncated file, settings that do not match the run
    inf = saved_checkpoint(world2, tmp_path, "inf.pth", edit=lambda m: m["temporal_emb.weight"].__setitem__((4, 1), float("inf")))
    with pytest.raises(CheckpointError, match=r"inf\.pth: tensor 'temporal_emb\.weight' .*inf"):
        eval_main(world2, base + ["--resume", inf], monkeypatch)
    raw = (world2 / "vqa_checkpoint/topa.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be read"):
        eval_main(world2, base + ["--resume", str(tmp_path / "cut.pth")], monkeypatch)
    recorded = dict(model="tiny", llama2=False, llama3=True, adapter_len=10, adapter_layer=2, max_feats=10, bias=3.0)
    l3 = saved_checkpoint(world2, tmp_path, "llama3.pth", args=recorded)
    with pytest.raises(CheckpointError, match=r"llama3\.pth does not match this run: .*Llama-3 backbone.*pass --llama3"):
        eval_main(world2, base + ["--resume", l3], monkeypatch)
    theta = saved_checkpoint(world2, tmp_path, "theta.pth", args=dict(recorded, llama2=True, llama3=False,
                                                                      rope_theta=20000.0))
    with pytest.raises(CheckpointError, match=r"pass --rope_theta 20000"):
        eval_main(world2, base + ["--resume", theta], monkeypatch)
    # nothing was written for any of these runs
    assert not list((tmp_path / "out").glob("*_nextqa_val.*"))


def test_llama2_checkpoint_on_llama3_and_released_rope_theta(world3, tmp_path):
    """A released Llama-3 checkpoint (its args: --llama3, no rope_theta: the original code used 10000)
    without --rope_theta 10000, and a Llama-2 checkpoint on Llama-3: one-line errors naming the flag."""
    recorded = dict(model="tiny", llama2=False, llama3=True, adapter_len=10, adapter_layer=2, max_feats=10, bias=3.5)
    released = saved_checkpoint(world3, tmp_path, "released_llama3.pth", args=recorded)
    args = [a for a in eval_cmd("--output_dir", "results/theta", dataset="egos", llama3=True) if a not in ("--rope_theta", "10000")]
    p = run_eval(world3, args + ["--resume", released])
    one_line_error(p, "released_llama3.pth", "RoPE theta 10000, this run uses 500000", "pass --rope_theta 10000")
    l2 = saved_checkpoint(world3, tmp_path, "llama2.pth", args=dict(recorded, llama2=True, llama3=False))
    p = run_eval(world3, eval_cmd("--output_dir", "results/theta", dataset="egos", llama3=True) + ["--resume", l2])
    one_line_error(p, "llama2.pth", "Llama-2 backbone", "pass --llama2")


def test_non_finite_score_is_an_error_naming_the_question(world2, tmp_path):
    """A checkpoint whose temporal embedding overflows fp16: the scores are NaN; the run stops naming the
    first question instead of predicting option 0, and the predictions file stays strict JSON."""
    huge = saved_checkpoint(world2, tmp_path, "huge.pth", edit=lambda m: m["temporal_emb.weight"].fill_(1e5))
    args = [a for a in eval_cmd("--output_dir", "results/huge") if a != "fp32"]
    args[args.index("--precision") + 1: args.index("--precision") + 1] = ["fp16"]
    p = run_eval(world2, args + ["--resume", huge])
    first = next(csv.DictReader(open(world2 / "data/nextqa/val.csv")))
    one_line_error(p, "val.csv:2", f"question {first['video']}_{first['qid']}", "are not finite")
    assert strict_json_lines(world2 / "results/huge/predictions_nextqa_val.jsonl") == []
    assert not (world2 / "results/huge/accuracy_nextqa_val.json").exists()


def test_predictions_stream_to_disk_before_a_late_failure(world2, tmp_path):
    """EgoSchema features are read batch by batch: an Inf in the 5th question's file stops the run with
    one line naming the file and row, and the 4 questions scored before it are on disk, strict JSON."""
    data = tmp_path / "data"
    shutil.copytree(world2 / "data" / "egos", data / "egos", ignore=shutil.ignore_patterns("questions.json", "subset_answers.json"))
    uids = [r["uid"] for r in csv.DictReader(open(data / "egos" / "val.csv"))]
    arr = np.load(data / "egos" / "features" / f"{uids[4]}.npy")
    arr[33, 7] = np.inf
    np.save(data / "egos" / "features" / f"{uids[4]}.npy", arr)
    out = tmp_path / "out"
    p = run_eval(world2, eval_cmd("--output_dir", str(out), "--data_root", str(data), "--batch_size", "2",
                                  "--max_seq_len", "600", "--memory_path", "data/textvid/memory.pkl", dataset="egos"))
    assert p.returncode == 1, p.stderr[-3000:]
    one_line_error(p, f"{uids[4]}.npy: features of video '{uids[4]}' hold a non-finite value (inf) in row 33",
                   "4 questions scored before it are in")
    rows = strict_json_lines(out / "predictions_egos_val.jsonl")
    assert [r["qid"] for r in rows] == uids[:4]
    assert all(len(r["scores"]) == 5 and r["prediction"] == int(np.argmin(r["scores"])) for r in rows)


def test_accuracy_file_records_skipped_questions_and_settings(world2, tmp_path, monkeypatch):
    alt = tmp_path / "data"
    (alt / "nextqa").mkdir(parents=True)
    shutil.copy(world2 / "data/nextqa/val.csv", alt / "nextqa" / "val.csv")
    rows = list(csv.DictReader(open(alt / "nextqa" / "val.csv")))
    feats = torch.load(world2 / "data/nextqa/clipvitl14.pth")
    gone = {rows[1]["video"], rows[5]["video"]}
    torch.save({k: v for k, v in feats.items() if k not in gone}, alt / "nextqa" / "clipvitl14.pth")
    skipped = [f"{r['video']}_{r['qid']}" for r in rows if r["video"] in gone]
    out = tmp_path / "out"
    eval_main(world2, eval_cmd("--output_dir", str(out), "--data_root", str(alt), "--skip_missing",
                               "--memory_path", "data/textvid/memory.pkl"), monkeypatch)
    rec = json.loads((out / "accuracy_nextqa_val.json").read_text())
    assert rec["n_skipped"] == len(skipped) >= 2 and rec["n_questions"] == len(rows) - len(skipped)
    assert (out / rec["skipped_ids_file"]).read_text().split() == skipped
    s = rec["settings"]
    assert s["checkpoint"] == str((world2 / "vqa_checkpoint/topa.pth").resolve()) and s["world_size"] == 1
    assert s["config"]["model"]["adapter_len"] == 10 and s["config"]["data"]["skip_missing"] is True
    assert s["config"]["data"]["data_root"] == str(alt) and s["config"]["run"]["output_dir"] == str(out)
    assert len(strict_json_lines(out / "predictions_nextqa_val.jsonl")) == rec["n_questions"]
