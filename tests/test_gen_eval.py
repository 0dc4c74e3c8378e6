"""eval.py on the generation benchmarks (docs/evaluation.md (generation benchmarks), docs/prompts.md) with a tiny Llama-2 in Meta's format, the real
SentencePiece tokenizer and a random TOPA checkpoint: the readers on the official layouts, the outputs
and their arithmetic, every answer equal to the full-recomputation oracle run item by item (memory
projection included), torchrun with 2 processes == 1 process, missing features named or counted, the
COCO caption metrics (real pycocoevalcap with Java) on a hand-checked set, and a clear error without Java."""
import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dataloader import captioning, mvbench
from dataloader.base import fit_frames
from llama.adapter import TOPAArgs, build_model
from llama.decoding import greedy_generate
from llama.memory import project_to_memory
from llama.memory import load_memory
from llama.weights import load_meta_checkpoint
from text import protocols as P
from text.tokenizer import load_tokenizer
from toyworld.fixtures import fixtures_dir
from toyworld.tiny import make_tiny_llama
from util.errors import ConfigError, DataError, MissingFileError, NonFiniteError
from util.files import save_atomic

REPO = Path(__file__).resolve().parents[1]
FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the COCO caption metrics need Java")

# a handful of MVBench items in three tasks, and one in each of the other 17
MVB = {
    "action_sequence": [
        {"video": "3MSZA.mp4", "question": "What happened after the person took the food?",
         "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup/glass/bottle.",
                        "Took the box."], "answer": "Ate the medicine.", "start": 0.0, "end": 21.2},
        {"video": "0KZ9A.mp4", "question": "What happened before the person held the phone?",
         "candidates": ["Opened the door.", "Sat on the bed.", "Took the towel."], "answer": "Took the towel.",
         "start": 3.5, "end": 12.0},
        {"video": "Z1XZ1.mp4", "question": "What did the person do first?",
         "candidates": ["Closed the window.", "Washed the dish."], "answer": "Washed the dish.", "start": 1, "end": 9}],
    "scene_transition": [
        {"video": "bb1.mp4", "question": "What's the right option for how the scenes in the video change?",
         "candidates": ["From the kitchen to the garden.", "From the office to the street.",
                        "From the beach to the forest.", "From the car to the house."],
         "answer": "From the office to the street."},
        {"video": "bb2.mp4", "question": "How do the scenes change?",
         "candidates": ["From a gym to a pool.", "From a shop to a road."], "answer": "From a gym to a pool."}],
    "action_count": [
        {"video": f"c{i}.mp4", "question": "How many times did the person launch objects on the table?",
         "candidates": ["3", "5", "2"], "answer": ["3", "5", "2"][i % 3]} for i in range(5)],
}
OTHER = [{"video": "x.mp4", "question": "Is it there?", "candidates": ["yes", "no"], "answer": "no"}]
N_MVB = sum(map(len, MVB.values())) + 17
MSRVTT = {"info": {}, "videos": [{"video_id": f"video{7010 + i}", "split": "test", "id": i} for i in range(4)],
          "sentences": [{"video_id": f"video{7010 + i}", "caption": c, "sen_id": 10 * i + j}
                        for i in range(4) for j, c in enumerate(["a man is cooking in a kitchen",
                                                                 f"someone prepares food number {i}"])]}
VATEX = [{"videoID": f"vid{i}_000010_000020", "enCap": [f"A person plays a guitar on stage {i}.",
                                                        "Someone is playing music."], "chCap": ["一个人"]}
         for i in range(3)]


def write_data(data: Path, g):
    jd = data / "mvbench" / "json"
    jd.mkdir(parents=True)
    feats = {}
    for name in mvbench.TASKS:
        stem = mvbench.MVBENCH_TASKS[name][0]
        items = MVB.get(stem, OTHER)
        (jd / f"{stem}.json").write_text(json.dumps(items))
        feats.update({f"{stem}/{i}": torch.randn(10, 768, generator=g).half() for i in range(len(items))})
    torch.save(feats, data / "mvbench" / "clipvitl14.pth")
    (data / "msrvtt").mkdir()
    (data / "msrvtt" / "test_videodatainfo.json").write_text(json.dumps(MSRVTT))
    torch.save({v["video_id"]: torch.randn(10, 768, generator=g).half() for v in MSRVTT["videos"]},
               data / "msrvtt" / "clipvitl14.pth")
    (data / "vatex").mkdir()
    (data / "vatex" / "vatex_validation_v1.0.json").write_text(json.dumps(VATEX))
    torch.save({v["videoID"]: torch.randn(10, 768, generator=g).half() for v in VATEX}, data / "vatex" / "clipvitl14.pth")
    (data / "textvid").mkdir()
    torch.save(F.normalize(torch.randn(300, 768, generator=g), dim=-1).half(), data / "textvid" / "memory.pkl")


def write_model(root: Path, kind: str, g):
    """A tiny Llama (Meta's format, the real tokenizer) and a random TOPA checkpoint under root/<kind>."""
    llama3 = kind == "llama3"
    mdir = make_tiny_llama(root / kind, Path(FIX) / kind / "tokenizer.model", dim=64 if not llama3 else 32,
                           n_layers=2, n_heads=4, n_kv_heads=2 if llama3 else None,
                           rope_theta=500000.0 if llama3 else None, llama2_style=not llama3, seed=1, std=0.1)
    tok = load_tokenizer(root / kind / "tokenizer.model")
    margs = TOPAArgs.from_params_json(mdir / "params.json", adapter_len=10, max_feats=10, bias=3.0,
                                      vocab_size=tok.n_words)
    model = build_model(margs, load_meta_checkpoint(mdir))
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "gate" in n else 0.1))
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "scaler": None,
                 "args": argparse.Namespace(model="tiny")}, root / kind / "topa.pth")
    return {"root": root, "kind": kind, "model": model.eval(), "tok": tok}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    g = torch.Generator().manual_seed(0)
    w = write_model(root, "llama2", g)
    write_data(root / "data", g)
    return w


def args(world, dataset, out, *extra, data=None):
    r, kind = world["root"], world["kind"]
    return ["--model", "tiny", f"--{kind}", "--llama_model_path", str(r / kind), "--max_feats", "10",
            "--adapter_len", "10", "--dataset", dataset, "--data_root", str(data or r / "data"), "--resume",
            str(r / kind / "topa.pth"), "--precision", "fp32", "--device", "cpu", "--batch_size", "3",
            "--output_dir", str(r / "results" / out), *extra]


def run_eval(argv):
    import eval as eval_script
    return eval_script.main(eval_script.get_args(argv))


def jsonl(path):
    return [json.loads(line) for line in open(path)]


# ---------------------------------------------------------------- readers

def test_mvbench_reader_official_layout(world, tmp_path):
    recs = mvbench.read_records(world["root"] / "data")
    assert len(recs) == N_MVB
    assert [r.key for r in recs[:3]] == ["action_sequence/0", "action_sequence/1", "action_sequence/2"]
    assert [r.task for r in recs].index("Scene Transition") < [r.task for r in recs].index("Action Count")  # table order
    assert [r.gold for r in recs[:3]] == ["A", "C", "B"]
    assert [r.gold for r in recs if r.stem == "action_count"] == ["A", "B", "C", "A", "B"]
    assert recs[0].prompt_fields()["choices"].startswith("(A) Ate the medicine.\n(B) Tidied")
    # malformed items name the file, the item and what is wrong
    data = tmp_path / "data"
    jd = data / "mvbench" / "json"
    jd.mkdir(parents=True)
    for name in mvbench.TASKS:
        (jd / f"{mvbench.MVBENCH_TASKS[name][0]}.json").write_text(json.dumps(OTHER))
    bad = dict(MVB["action_sequence"][1], answer="Took a towel.")
    (jd / "action_sequence.json").write_text(json.dumps([MVB["action_sequence"][0], bad]))
    with pytest.raises(DataError, match=r"action_sequence.json\[1\].*action_sequence/1.*not one of the candidates"):
        mvbench.read_records(data)
    (jd / "action_sequence.json").write_text(json.dumps([dict(bad, candidates="Took a towel.")]))
    with pytest.raises(DataError, match="candidates"):
        mvbench.read_records(data)
    (jd / "action_sequence.json").unlink()
    with pytest.raises(MissingFileError, match="1 of the 20 task files.*action_sequence.json"):
        mvbench.read_records(data)
    with pytest.raises(ConfigError, match="one split"):
        mvbench.read_records(world["root"] / "data", "val")


def test_caption_readers_official_layouts(world, tmp_path):
    msr = captioning.read_records(world["root"] / "data", "msrvtt")
    assert [r.key for r in msr] == [f"video{7010 + i}" for i in range(4)]
    assert msr[2].refs == ["a man is cooking in a kitchen", "someone prepares food number 2"]
    vat = captioning.read_records(world["root"] / "data", "vatex")
    assert [r.key for r in vat] == [v["videoID"] for v in VATEX] and vat[1].refs == VATEX[1]["enCap"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(dict(MSRVTT, sentences=MSRVTT["sentences"] + [{"video_id": "video9", "caption": "x"}])))
    with pytest.raises(DataError, match=r"sentences\[8\].*video9"):
        captioning.read_msrvtt(str(path))
    path.write_text(json.dumps(dict(MSRVTT, sentences=MSRVTT["sentences"][:6])))
    with pytest.raises(DataError, match="video7013 has no reference caption"):
        captioning.read_msrvtt(str(path))
    path.write_text(json.dumps(VATEX + [VATEX[0]]))
    with pytest.raises(DataError, match=r"\[3\]: video vid0_000010_000020 is listed twice"):
        captioning.read_vatex(str(path))
    path.write_text(json.dumps([dict(VATEX[0], enCap=["fine", ""])]))
    with pytest.raises(DataError, match="non-empty"):
        captioning.read_vatex(str(path))


def test_generation_benchmarks_are_not_for_option_scoring():
    from dataloader.benchmarks import build_mcqa_dataset, get
    assert get("msr-vtt").name == "msrvtt" and get("mvbench").kind == "generate"
    with pytest.raises(ConfigError, match="generation benchmark"):
        build_mcqa_dataset("mvbench", "./data", "test", None)


# ---------------------------------------------------------------- MVBench end to end

def oracle(world, item_prompts, videos, protocol, memory):
    """Each item alone, recomputing the whole sequence per token (no cache, no batch)."""
    model, tok = world["model"], world["tok"]
    masked = P.masked_ids(tok) if protocol.mask else []
    out = []
    for prompt, v in zip(item_prompts, videos):
        v = fit_frames(v, 10)
        if memory is not None:
            v = project_to_memory(v, memory)
        (ids,) = greedy_generate(model, [prompt], v[None], max_new_tokens=protocol.max_new_tokens,
                                 eos_id=tok.eos_id, masked_ids=masked, use_cache=False)
        out.append(ids)
    return out


def test_mvbench_outputs_equal_the_oracle(world, capsys):
    acc = run_eval(args(world, "mvbench", "mvb", "--letter_constrained"))
    out = world["root"] / "results" / "mvb"
    preds = jsonl(out / "predictions_mvbench_test.jsonl")
    table = capsys.readouterr().out
    recs = mvbench.read_records(world["root"] / "data")
    assert [(p["task"], p["index"], p["video"], p["answer"]) for p in preds] == \
        [(r.task, r.index, r.video, r.gold) for r in recs]
    for p, r in zip(preds, recs):
        assert p["text"].startswith("(")
        assert p["correct"] == P.published_correct(p["text"], p["answer"])
        assert p["prediction"] == P.predicted_letter(p["text"], len(r.candidates))
        assert p["prediction_constrained"] in "ABCDE"[:len(r.candidates)]
        assert p["correct_constrained"] == (p["prediction_constrained"] == r.gold)
    res = json.loads((out / "accuracy_mvbench_test.json").read_text())
    assert res["accuracy"] == json.loads(json.dumps(acc))
    assert list(res["accuracy"]) == mvbench.TASKS + ["Avg"]
    avg = res["accuracy"]["Avg"]
    assert avg["total"] == N_MVB and avg["correct"] == sum(p["correct"] for p in preds)
    assert avg["acc"] == pytest.approx(100 * avg["correct"] / N_MVB)   # all correct / all questions
    assert res["accuracy"]["Action Count"]["total"] == 5
    assert res["n_not_a_letter"] == avg["not_a_letter"] == sum(p["prediction"] is None for p in preds)
    assert res["settings"]["memory"] is True and res["settings"]["masked_ids"] == [920, 1128]
    assert "Avg" in table and "Scene Transition" in table and "no valid letter" in table

    # every answer is what the model gives each item alone, recomputing every token, memory projected
    memory = load_memory(world["root"] / "data" / "textvid" / "memory.pkl")
    feats, prompts, ref = check_oracle(world, preds, recs, memory)
    # the letter-constrained answer: argmax over the item's letters of the first step's logits
    letters = P.letter_ids(world["tok"], 4)
    for p, r, q in zip(preds, recs, prompts):
        v = project_to_memory(fit_frames(feats[r.key], 10), memory)
        tokens = torch.tensor([[0 if t == P.VIDEO else t for t in q]])
        with torch.no_grad():
            h = world["model"].hidden(tokens, torch.arange(len(q))[None], None, v[None], torch.tensor([q.index(P.VIDEO)]))
            logits = world["model"].logits(h[0, -1])
        assert p["prediction_constrained"] == "ABCD"[int(logits[letters[:len(r.candidates)]].argmax())]
    # without the memory projection the answers are others (the flag reaches the model)
    assert oracle(world, prompts, [feats[r.key] for r in recs], P.MVBENCH, None) != ref

    # the reference path through eval.py gives the same file
    run_eval(args(world, "mvbench", "mvb_full", "--letter_constrained", "--no_kv_cache"))
    assert (world["root"] / "results" / "mvb_full" / "predictions_mvbench_test.jsonl").read_text() == \
        (out / "predictions_mvbench_test.jsonl").read_text()


def check_oracle(world, preds, recs, memory):
    feats = torch.load(world["root"] / "data" / "mvbench" / "clipvitl14.pth")
    prompts = [P.prompt_ids(world["tok"], P.MVBENCH.p1, P.MVBENCH.p2_text(**r.prompt_fields()), 10) for r in recs]
    ref = oracle(world, prompts, [feats[r.key] for r in recs], P.MVBENCH, memory)
    assert [p["text"] for p in preds] == [P.generated_text(world["tok"], q, ids, P.MVBENCH.marker)[0]
                                          for q, ids in zip(prompts, ref)]
    return feats, prompts, ref


def test_mvbench_llama3_without_memory_equals_the_oracle(world, tmp_path):
    w3 = write_model(world["root"], "llama3", torch.Generator().manual_seed(1))
    run_eval(args(w3, "mvbench", "mvb3", "--no_memory", "--rope_theta", "10000"))
    preds = jsonl(world["root"] / "results" / "mvb3" / "predictions_mvbench_test.jsonl")
    res = json.loads((world["root"] / "results" / "mvb3" / "accuracy_mvbench_test.json").read_text())
    assert res["settings"]["memory"] is False and res["settings"]["masked_ids"] == [1268, 2650]
    with torch.no_grad():  # the oracle model with eval's RoPE theta
        w3["model"] = build_model(dataclasses.replace(w3["model"].args, rope_theta=10000.0),
                                  load_meta_checkpoint(world["root"] / "llama3" / "tiny"),
                                  trainable=w3["model"].trainable_state_dict()).eval()
    check_oracle(w3, preds, mvbench.read_records(world["root"] / "data"), None)


def test_mvbench_torchrun_two_processes_equal_one(world):
    one = world["root"] / "results" / "mvb_one"
    run_eval(args(world, "mvbench", "mvb_one"))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(REPO / "eval.py")] + args(world, "mvbench", "mvb_two"), env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    two = world["root"] / "results" / "mvb_two"
    assert (two / "predictions_mvbench_test.jsonl").read_text() == (one / "predictions_mvbench_test.jsonl").read_text()
    a, b = (json.loads((d / "accuracy_mvbench_test.json").read_text()) for d in (one, two))
    assert a["accuracy"] == b["accuracy"] and b["settings"]["world_size"] == 2


def test_missing_features_are_named_or_counted(world, tmp_path):
    data = tmp_path / "data"
    (data / "mvbench").mkdir(parents=True)
    os.symlink(world["root"] / "data" / "mvbench" / "json", data / "mvbench" / "json")
    feats = torch.load(world["root"] / "data" / "mvbench" / "clipvitl14.pth")
    del feats["scene_transition/1"]
    torch.save(feats, data / "mvbench" / "clipvitl14.pth")
    with pytest.raises(DataError, match=rf"1 of {N_MVB} items have no features in .*clipvitl14.pth: scene_transition/1 "
                                        r"\(.*scene_transition.json\[1\]\)"):
        run_eval(args(world, "mvbench", "skip", "--no_memory", data=data))
    run_eval(args(world, "mvbench", "skip", "--no_memory", "--skip_missing", data=data))
    res = json.loads((world["root"] / "results" / "skip" / "accuracy_mvbench_test.json").read_text())
    assert res["n_skipped"] == 1 and res["skipped"] == ["scene_transition/1"]
    assert res["accuracy"]["Avg"]["total"] == N_MVB - 1
    preds = jsonl(world["root"] / "results" / "skip" / "predictions_mvbench_test.jsonl")
    assert ("Scene Transition", 1) not in [(p["task"], p["index"]) for p in preds] and len(preds) == N_MVB - 1


def test_non_finite_scores_are_an_error_naming_the_item(world, tmp_path):
    """fp16 with one huge visual_proj column: the one item whose features use that column overflows. It
    gets no answer: the run stops naming it, and the answers of the steps before it stay in the file."""
    data = tmp_path / "data"
    (data / "mvbench").mkdir(parents=True)
    os.symlink(world["root"] / "data" / "mvbench" / "json", data / "mvbench" / "json")
    feats = torch.load(world["root"] / "data" / "mvbench" / "clipvitl14.pth")
    for k, v in feats.items():
        v[:, 5] = 20.0 if k == "action_count/2" else 0.0
    torch.save(feats, data / "mvbench" / "clipvitl14.pth")
    ck = torch.load(world["root"] / "llama2" / "topa.pth", weights_only=False)
    ck["model"]["visual_proj.weight"][:, 5] = 1e6
    torch.save(ck, tmp_path / "huge.pth")
    argv = args(world, "mvbench", "nonfinite", "--no_memory", "--batch_size", "2", data=data)
    argv[argv.index("fp32")] = "fp16"
    with pytest.raises(NonFiniteError, match=r"action_count.json\[2\]: item action_count/2: .* not finite") as e:
        run_eval(argv + ["--resume", str(tmp_path / "huge.pth")])
    kept = jsonl(world["root"] / "results" / "nonfinite" / "predictions_mvbench_test.jsonl")
    assert f"({len(kept)} items generated before it" in str(e.value) and len(kept) < N_MVB
    assert ("Action Count", 2) not in [(p["task"], p["index"]) for p in kept]
    assert not (world["root"] / "results" / "nonfinite" / "accuracy_mvbench_test.json").exists()


# ---------------------------------------------------------------- captioning

@needs_java
def test_caption_metrics_hand_checked():
    from engine.caption_metrics import coco_caption_metrics
    refs = {"v1": ["a man is cooking food"], "v2": ["Dogs run on grass."]}
    m = coco_caption_metrics(refs, {"v1": "a man is cooking", "v2": "dogs run on grass"})
    # corpus BLEU: every candidate n-gram matches (8/8, 6/6, 4/4, 2/2 for n = 1..4); length 8 vs 9
    bp = math.exp(1 - 9 / 8)
    for n in range(1, 5):
        assert m[f"BLEU-{n}"] == pytest.approx(bp, abs=1e-6)
    # ROUGE-L, beta 1.2: v1 LCS 4 of 4 / 5 -> F = 2.44 * 0.8 / (0.8 + 1.44); v2 = 1
    assert m["ROUGE-L"] == pytest.approx((2.44 * 0.8 / 2.24 + 1) / 2, abs=1e-6)
    # CIDEr-D: v2 equals its reference (10); v1's n-grams are a subset of the reference's: cosine
    # k / sqrt(k (k+1)) for k = 4, 3, 2, 1 n-grams, length penalty exp(-1 / (2 * 6^2))
    v1 = 10 * math.exp(-1 / 72) * sum(k / math.sqrt(k * (k + 1)) for k in (4, 3, 2, 1)) / 4
    assert m["CIDEr"] == pytest.approx((v1 + 10) / 2, abs=1e-4)
    assert 0.5 < m["METEOR"] < 1 and set(m) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}


def test_caption_metrics_without_java_is_a_clear_error(world, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=str(tmp_path))  # no java on PATH
    p = subprocess.run([sys.executable, str(REPO / "eval.py")] + args(world, "msrvtt", "nojava"), env=env,
                       capture_output=True, text=True, timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert err.startswith("eval.py: error:") and "Java" in err and "no `java` on PATH" in err
    assert not (world["root"] / "results" / "nojava").exists()  # refused before anything ran


def caption_oracle(world, dataset, protocol, memory) -> dict:
    """{video: caption} of the oracle (each video alone, every token recomputed) on the feature file."""
    feats = torch.load(world["root"] / "data" / dataset / "clipvitl14.pth")
    prompt = P.prompt_ids(world["tok"], protocol.p1, protocol.p2_text(), 10)
    ids = oracle(world, [prompt] * len(feats), list(feats.values()), protocol, memory)
    return {v: protocol.cut(P.generated_text(world["tok"], prompt, g, protocol.marker)[0]) for v, g in zip(feats, ids)}


@needs_java
def test_msrvtt_and_vatex_outputs(world, tmp_path, monkeypatch):
    import engine.generation
    scored, real = [], engine.generation.coco_caption_metrics

    def spy(refs, preds, spice=False):   # the metrics' inputs (the function itself is hand-checked above)
        scored.append((refs, preds, real(refs, preds, spice)))
        return scored[-1][2]
    monkeypatch.setattr(engine.generation, "coco_caption_metrics", spy)
    metrics = run_eval(args(world, "msrvtt", "msr"))
    out = world["root"] / "results" / "msr"
    preds = jsonl(out / "predictions_msrvtt_test.jsonl")
    assert [p["video"] for p in preds] == [v["video_id"] for v in MSRVTT["videos"]]
    for p in preds:  # the marker ends the prompt: the caption is the generated text's first sentence
        assert set(p) == {"video", "caption", "text"} and p["caption"] == P.first_sentence(p["text"])
    res = json.loads((out / "metrics_msrvtt_test.json").read_text())
    assert res["metrics"] == metrics and set(metrics) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                                          "ROUGE-L", "CIDEr"}
    assert res["settings"]["memory"] is True and res["settings"]["max_new_tokens"] == 10
    # the captions are the oracle's (memory projected) and the metrics those of the references written above
    memory = load_memory(world["root"] / "data" / "textvid" / "memory.pkl")
    want = caption_oracle(world, "msrvtt", P.MSRVTT, memory)
    assert {p["video"]: p["caption"] for p in preds} == want
    refs = {v["video_id"]: [c["caption"] for c in MSRVTT["sentences"] if c["video_id"] == v["video_id"]]
            for v in MSRVTT["videos"]}
    assert scored[-1] == (refs, want, metrics)
    # MSR-VTT's protocol projects onto the memory: without the file it says so, unless --no_memory
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(world["root"] / "data" / "msrvtt", data / "msrvtt")
    os.symlink(world["root"] / "data" / "vatex", data / "vatex")
    with pytest.raises(MissingFileError, match="memory.pkl"):
        run_eval(args(world, "msrvtt", "msr2", data=data))
    # VATEX's does not: it runs without a memory file
    metrics = run_eval(args(world, "vatex", "vat", data=data))
    preds = jsonl(world["root"] / "results" / "vat" / "predictions_vatex_test.jsonl")
    assert [p["video"] for p in preds] == [v["videoID"] for v in VATEX]
    assert all(p["caption"] == P.VATEX.cut("The video shows" + p["text"]) for p in preds)
    res = json.loads((world["root"] / "results" / "vat" / "metrics_vatex_test.json").read_text())
    assert res["settings"]["memory"] is False and res["settings"]["masked_ids"] == [] and res["metrics"] == metrics
    want = caption_oracle(world, "vatex", P.VATEX, None)
    assert {p["video"]: p["caption"] for p in preds} == want
    assert scored[-1] == ({v["videoID"]: v["enCap"] for v in VATEX}, want, metrics)
    with pytest.raises(ConfigError, match="--letter_constrained is for MVBench"):
        run_eval(args(world, "vatex", "x", "--letter_constrained"))


# ---------------------------------------------------------------- scripts

@pytest.mark.parametrize("dataset,memory,llama", [("mvbench", True, "llama2_7b"), ("msrvtt", True, "llama2_13b"),
                                                  ("vatex", False, "llama3_8b")])
def test_generation_scripts_parse_with_dry_run(dataset, memory, llama):
    env = dict(os.environ, TORCHRUN=sys.executable, LLAMA=llama, PYTHONPATH=str(REPO))
    script = REPO / "scripts" / "eval" / f"zeroshot_eval_{dataset}.sh"
    r = subprocess.run(["bash", str(script), "--dry_run"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    a = eval(r.stdout.strip().splitlines()[-1], {"__builtins__": {}})
    assert a["dataset"] == dataset and not a["no_memory"] and a["max_feats"] == 10
    # the scripts leave the memory to the protocol (so that an appended --no_memory works)
    from engine.config import EvalConfig
    assert EvalConfig.from_args(argparse.Namespace(**a)).use_memory is memory
    assert a["resume"] == f"vqa_checkpoint/topa_{llama}.pth" and a["adapter_len"] == 50
    assert a["model"] == {"llama2_7b": "7B", "llama2_13b": "13B", "llama3_8b": "8B"}[llama]
    assert a["llama3"] == (llama == "llama3_8b") and a["rope_theta"] == (10000 if llama == "llama3_8b" else None)
