"""TOPA as an lmms-eval model (engine/lmms.py) on the toy world (tiny random Llama and CLIP, PyAV videos):
a local task folder (tests/lmms_tasks/topa_toy: `dataset_path: json`, multiple-choice and open
questions) run through lmms-eval's own entry point writes results and samples whose every answer is the
Python API's; a broken video or model argument fails the run; loglikelihood is the API's NLL; the
prompt reader finds the options of MVBench's and Video-MME's wording.

Needs `pip install -e ".[lmms]"` (then `pip uninstall -y torchvision`, docs/lmms_eval.md)."""
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")   # under TOPA_CI=1 a skip fails the run (tests/conftest.py)

from engine.api import QAConfig, TOPAVideoQA  # noqa: E402
from engine.lmms import TOPALmms, model_config, split_options  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from toyworld.demo import build_toy  # noqa: E402
from util.errors import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lmms_tasks" / "topa_toy"


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("lmms")
    w = build_toy(root)
    (root / "broken.mp4").write_bytes(b"not a video")
    args = {"llama_model_path": w["llama_model_path"], "model": "tiny", "adapter_len": "10",
            "resume": w["resume"], "clip_model": w["clip_model"], "memory_path": w["memory_path"],
            "device": "cpu", "precision": "fp32"}
    return {"root": root, "args": args, "qa": TOPAVideoQA(model_config(args), warn=lambda m: None)}


def run_lmms(world, tasks, out, model_args=None, torchrun=0):
    args = model_args or ",".join(f"{k}={v}" for k, v in world["args"].items())
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOPA_LMMS_VIDEOS=str(world["root"]),
               HF_HOME=str(world["root"] / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    str(torchrun)] if torchrun else [])
    cmd = launcher + ["-m", "lmms_eval", "--model", "topa", "--model_args", args, "--tasks", tasks,
                      "--include_path", str(TASKS), "--output_path", str(out), "--log_samples", "--batch_size", "3",
                      "--verbosity", "DEBUG"]
    return subprocess.run(cmd, cwd=TASKS, env=env, capture_output=True, text=True, timeout=900)


def samples(out, task):
    (path,) = Path(out).rglob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in open(path)]


def answer(sample) -> str:
    r = sample["filtered_resps"]
    return r[0] if isinstance(r, list) else r


def test_the_entry_point_registers_topa():
    eps = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert eps.get("topa") == "engine.lmms:manifest", "pip install -e .[lmms] registers the entry point"


@pytest.fixture(scope="module")
def single(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmms_out") / "one"
    p = run_lmms(world, "topa_toy_mc,topa_toy_open", out)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return out


def test_tasks_run_through_lmms_eval_and_answer_as_the_api(world, single):
    (results,) = single.rglob("*_results.json")
    res = json.loads(results.read_text())["results"]
    assert {"topa_toy_mc", "topa_toy_open"} <= set(res)
    docs = json.loads((TASKS / "docs.json").read_text())
    qa, root = world["qa"], world["root"]
    mc = sorted(samples(single, "topa_toy_mc"), key=lambda s: s["doc_id"])
    assert len(mc) == len(docs)
    got = [answer(s) for s in mc]
    want = [qa.mvbench(str(root / d["video"]), d["question"], d["candidates"]).letter for d in docs]
    assert got == want
    accuracy = sum(g == d["answer"] for g, d in zip(got, docs)) / len(docs)
    assert abs(res["topa_toy_mc"]["accuracy,none"] - accuracy) < 1e-9
    op = sorted(samples(single, "topa_toy_open"), key=lambda s: s["doc_id"])
    got = [answer(s) for s in op]
    want = [qa.complete(str(root / d["video"]), f"Question: {d['question']}\nAnswer:", until=("\n",),
                        max_new_tokens=6).text for d in docs]
    assert got == want


def test_torchrun_two_processes_equal_one(world, single, tmp_path):
    p = run_lmms(world, "topa_toy_mc,topa_toy_open", tmp_path / "two", torchrun=2)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    for task in ("topa_toy_mc", "topa_toy_open"):
        one = {s["doc_id"]: answer(s) for s in samples(single, task)}
        two = {s["doc_id"]: answer(s) for s in samples(tmp_path / "two", task)}
        assert one == two and len(one) == 4


def test_a_broken_video_or_model_argument_fails_the_run(world, tmp_path):
    p = run_lmms(world, "topa_toy_broken", tmp_path / "broken")
    assert p.returncode != 0 and "broken.mp4" in p.stdout + p.stderr
    assert not list((tmp_path / "broken").rglob("*_results.json"))
    bad = ",".join(f"{k}={v}" for k, v in world["args"].items()) + ",frames=12"
    p = run_lmms(world, "topa_toy_open", tmp_path / "badarg", model_args=bad)
    assert p.returncode != 0 and "unknown setting(s) frames" in p.stdout + p.stderr
    assert not list((tmp_path / "badarg").rglob("*_results.json"))


def test_loglikelihood_equals_the_api(world):
    model = TOPALmms(**world["args"], batch_size=2)
    root = world["root"]
    docs = {0: {"video": "red_ball.mp4"}, 1: {"video": "green_square.mp4"}}
    model.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [str(root / doc["video"])]
    reqs = [("Question: what moves?\nAnswer:", " a red ball", 0), ("Question: what moves?\nAnswer:", " a cat", 0),
            ("What color is it? ", "green", 1)]
    inst = [Instance("loglikelihood", (c, t, visual, d, "t", "test"), i, {"task": "t", "doc_id": d, "repeats": 1})
            for i, (c, t, d) in enumerate(reqs)]
    got = model.loglikelihood(inst)
    for (loss, greedy), (c, t, d) in zip(got, reqs):
        want = world["qa"].loglikelihood(str(root / docs[d]["video"]), c, t, with_greedy=True)
        assert abs(loss - want.mean) <= 1e-5 and greedy == want.greedy
    assert model.qa.stats["decoded"] == 2   # three requests, two videos: each decoded once
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round(inst)


def test_the_prompt_reader():
    mvbench = "Question:What is he doing?\nOption:\n(A) running\n(B) sitting\n(C) eating\nOnly give the best option.\n"
    assert split_options(mvbench) == ("What is he doing?", ["running", "sitting", "eating"])
    videomme = ("Select the best answer to the following multiple-choice question based on the video. Respond "
                "with only the letter (A, B, C, or D) of the correct option.\nHow many cats are there?\nA. One.\n"
                "B. Two.\nC. Three.\nD. Four.\nThe best answer is:")
    assert split_options(videomme) == ("How many cats are there?", ["One.", "Two.", "Three.", "Four."])
    assert split_options("Question: Where are they?\nAnswer:") is None
    assert split_options("Question: which?\n(B) no A first\n(C) x") is None
    with pytest.raises(ConfigError, match="unknown setting"):
        model_config({"nonsense": "1"})
    assert isinstance(model_config({"memory": "false"}), QAConfig) and model_config({"memory": "false"}).memory is False
