"""eval.py end to end on tiny models in Meta's on-disk format with the real tokenizers and real
NExT-QA / EgoSchema question text: outputs, 1 process == torchrun 2 processes, packed == full,
and bad input named in one line."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llama.adapter import TOPAArgs, build_model
from llama.checkpoint import load_meta_checkpoint, save_atomic
from llama.tokenizer import load_tokenizer
from toyworld.tiny import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
FIX = os.environ.get("TOPA_FIXTURES")
pytestmark = pytest.mark.skipif(not FIX, reason="TOPA_FIXTURES not set")
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
    # packed and full scoring agree
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


def one_line_error(p, *needles):
    err = p.stderr.strip()
    assert p.returncode != 0, p.stdout[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    for n in needles:
        assert n in err, err


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
    from engine.evaluation import accuracy
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
