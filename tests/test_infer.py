"""One inference core (engine/infer.py) under every way of asking TOPA: a question answered through eval.py
(option scoring and generation), training's per-epoch evaluation, the Python API, the demo's handler
(app.DemoApp) and the lmms-eval plugin goes through `infer.score` / `infer.generate`. The core is wrapped
by a recorder that passes every call through (so the answers are the real ones) and counts what each
caller handed it: the questions asked must be the questions the core saw. Runs on the toy world of
`app.py --toy` (tiny random Llama and CLIP, H.264 videos) with a small NExT-QA and MVBench layout."""
import csv
import json
import os

import pytest
import torch

from dataloader import mvbench
from engine import infer
from test_api_inputs import make_api   # the API on a build_toy world
from toyworld.demo import build_toy

N_NEXTQA = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("infer")
    w = build_toy(root)
    g = torch.Generator().manual_seed(0)
    data = root / "data"
    (data / "nextqa").mkdir(parents=True)
    with open(data / "nextqa" / "val.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                      "a0", "a1", "a2", "a3", "a4"])
        for i in range(N_NEXTQA):
            out.writerow([100 + i, 30, 64, 48, "what is moving", i % 5, i, "CW", "a red ball", "a green square",
                          "yellow stripes", "a dog", "nothing"])
    torch.save({str(100 + i): torch.randn(7 + i, 768, generator=g).half() for i in range(N_NEXTQA)},
               data / "nextqa" / "clipvitl14.pth")
    jd = data / "mvbench" / "json"
    jd.mkdir(parents=True)
    feats = {}
    for name in mvbench.TASKS:
        stem = mvbench.MVBENCH_TASKS[name][0]
        (jd / f"{stem}.json").write_text(json.dumps([{"video": "v.mp4", "question": "What is moving?",
                                                      "candidates": ["a ball", "a square"], "answer": "a ball"}]))
        feats[f"{stem}/0"] = torch.randn(10, 768, generator=g).half()
    torch.save(feats, data / "mvbench" / "clipvitl14.pth")
    (data / "textvid").mkdir()
    os.link(w["memory_path"], data / "textvid" / "memory.pkl")
    return {"root": root, "data": data, **w}


class Recorder:
    """The core, wrapped: every call goes through; each records (function, questions or prompts seen)."""

    def __init__(self, monkeypatch):
        self.calls = []
        score, generate = infer.score, infer.generate

        def scored(model, batch, memory=None, greedy=False):
            self.calls.append(("score", len(batch.items), greedy))
            return score(model, batch, memory, greedy)

        def generated(model, tok, prompts, decoding, memory=None):
            self.calls.append(("generate", len(prompts), bool(decoding.letters)))
            return generate(model, tok, prompts, decoding, memory)
        monkeypatch.setattr(infer, "score", scored)
        monkeypatch.setattr(infer, "generate", generated)

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def seen(self, what: str) -> int:
        return sum(n for f, n, _ in self.calls if f == what)


def model_flags(w):
    return ["--llama_model_path", w["llama_model_path"], "--model", "tiny", "--llama2", "--adapter_len", "10",
            "--max_feats", "10", "--resume", w["resume"], "--device", "cpu", "--precision", "fp32"]


def test_eval_py_goes_through_the_core(world, monkeypatch):
    import eval as eval_py
    rec = Recorder(monkeypatch)
    for dataset, extra in (("nextqa", ["--memory"]), ("mvbench", ["--letter_constrained"])):
        out = world["root"] / "results" / dataset
        eval_py.main(eval_py.get_args(model_flags(world) + ["--dataset", dataset, "--data_root", str(world["data"]),
                                                            "--batch_size", "2", "--output_dir", str(out), *extra]))
    calls = rec.take()
    assert {c for c in calls if c[0] == "score"} == {("score", 2, False), ("score", 1, False)}
    assert sum(n for f, n, _ in calls if f == "score") == N_NEXTQA
    assert sum(n for f, n, letters in calls if f == "generate" and letters) == 20   # one item per MVBench task
    rows = [json.loads(line) for line in open(world["root"] / "results" / "nextqa" / "predictions_nextqa_val.jsonl")]
    assert len(rows) == N_NEXTQA


def test_training_evaluation_goes_through_the_core(world, monkeypatch):
    from dataloader import benchmarks
    from engine import scoring
    from text.prompts import PromptBuilder
    qa = make_api(world)   # only its model and tokenizer: CLIP and the memory load on first use
    ds = benchmarks.build_mcqa_dataset("nextqa", world["data"], "val", PromptBuilder(qa.tok, 10))
    rec = Recorder(monkeypatch)
    res = scoring.evaluate(qa.model, ds, batch_size=3, device="cpu", progress=False)
    assert len(res.predictions) == N_NEXTQA and rec.seen("score") == N_NEXTQA


def test_the_api_goes_through_the_core(world, monkeypatch):
    qa = make_api(world, batch_size=2)
    red, green, stripes = world["examples"]
    rec = Recorder(monkeypatch)
    opts = ["a red ball", "a green square", "yellow stripes"]
    got = qa.choose_batch([(red, "What is moving?", opts), (green, "What is moving?", opts),
                           (stripes, "What is moving?", opts)])
    assert rec.take() == [("score", 2, False), ("score", 1, False)] and len(got) == 3
    qa.loglikelihood_batch([(red, "It is", " a ball"), (green, "It is", " a square")], with_greedy=True)
    assert rec.take() == [("score", 2, True)]
    qa.mvbench(red, "What is moving?", opts)
    assert rec.take() == [("generate", 1, True)]
    qa.describe_batch([red, green, stripes])
    qa.answer(red, "What is moving?")
    qa.complete(green, "Question: What is it?\nAnswer:", until=("\n",))
    assert rec.take() == [("generate", 2, False), ("generate", 1, False)] + [("generate", 1, False)] * 2


def test_the_demo_goes_through_the_core(world, monkeypatch):
    pytest.importorskip("gradio")
    import app as app_module
    app = app_module.DemoApp(make_api(world, batch_size=2), world["examples"], toy=True)
    protocol = next(k for k, v in app_module.MEMORY.items() if v is None)   # the protocol's memory and frames
    red = world["examples"][0]
    rec = Recorder(monkeypatch)
    opts = ["a red ball", "a green square", "yellow stripes", "", ""]
    modes = {"Multiple choice": ("score", 1, False), "Multiple choice (MVBench letters)": ("generate", 1, True),
             "Open question": ("generate", 1, False), "Describe": ("generate", 1, False)}
    for mode, want in modes.items():
        _, text, _, gallery = app.ask(red, mode, "What is moving?", *opts, protocol, protocol, 0, [])
        assert rec.take() == [want] and gallery, mode


def test_the_lmms_eval_plugin_goes_through_the_core(world, monkeypatch):
    pytest.importorskip("lmms_eval")   # under TOPA_CI=1 a skip fails the test (tests/conftest.py)
    from lmms_eval.api.instance import Instance

    from engine.lmms import TOPALmms
    model = TOPALmms(llama_model_path=world["llama_model_path"], model="tiny", adapter_len="10",
                     resume=world["resume"], clip_model=world["clip_model"], memory_path=world["memory_path"],
                     device="cpu", precision="fp32", batch_size="2")
    docs = {i: {"video": v} for i, v in enumerate(world["examples"])}
    model.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [doc["video"]]
    mc = "Question: What is moving?\n(A) a red ball\n(B) a green square\nAnswer:"
    gen = [(mc, {}, 0), ("Question: What is moving?\nAnswer:", {"until": ["\n"], "max_new_tokens": 5}, 1)]
    rec = Recorder(monkeypatch)
    model.generate_until([Instance("generate_until", (c, k, visual, d, "t", "test"), i,
                                   {"task": "t", "doc_id": d, "repeats": 1}) for i, (c, k, d) in enumerate(gen)])
    assert rec.take() == [("generate", 1, True), ("generate", 1, False)]
    model.loglikelihood([Instance("loglikelihood", ("It is", " a ball", visual, d, "t", "test"), d,
                                  {"task": "t", "doc_id": d, "repeats": 1}) for d in range(3)])
    assert rec.take() == [("score", 2, True), ("score", 1, True)]
