"""Every entry point that answers about a raw video, held against the file pipeline instead of against the
API it calls: videos long enough for every frame rule to subsample (26 s at 25 fps, 27 s at NTSC's
30000/1001), extract_features.py on them (NExT-QA's 1 frame/s, MVBench's segments, MSR-VTT's strided
frames), then eval.py on those files. Its predictions are the oracle of

- the Python API (engine/api.py): `choose` (NExT-QA's scoring on the 1 frame/s rows eval.py fits),
  `mvbench` (MVBench's letters), `describe` (MSR-VTT's caption), each on the video file, and the frames
  each request picked equal the rows of the feature file;
- ask.py (its printed answer line), the web demo through gradio_client, and the lmms-eval plugin
  (its `generate_until` on MVBench's lmms-eval wording).

Tiny Llama-2 in Meta's format with the real tokenizer, a random TOPA checkpoint, a tiny random CLIP, CPU."""
import argparse
import csv
import json
import math
import os
import socket
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.generation
from dataloader import mvbench
from dataloader.base import fit_frames
from engine.api import QAConfig, TOPAVideoQA
from llama.adapter import TOPAArgs, build_model
from llama.build import ModelConfig
from llama.weights import load_meta_checkpoint
from text.tokenizer import load_tokenizer
from toyworld.tiny import make_tiny_llama
from toyworld.videos import save_random_clip, write_video
from util.files import save_atomic

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

T = 10
VIDEOS = {"video7010": (26 * 25, Fraction(25)),                  # 26 s: 26 rows at 1 frame/s
          "video7011": (809, Fraction(30000, 1001))}             # 27 s at 29.97 fps: 27 rows
NEXTQA = [("video7010", "what moves across the screen", ["a ball", "a cat", "a car", "a cloud", "nothing"], 2),
          ("video7010", "where does it happen", ["indoors", "in a park", "on a road", "at sea", "in space"], 0),
          ("video7011", "how many people are there", ["one", "two", "three", "four", "none"], 4),
          ("video7011", "what is the weather like", ["sunny", "rainy", "snowy", "foggy", "windy"], 1)]
# MVBench items of two tasks without windows (the whole video, as the API's `mvbench`); the other 18 task
# files hold an item whose video is absent (not extracted; eval.py --skip_missing counts it)
MVB = {"scene_transition": [{"video": "video7010.mp4", "question": "How do the scenes change?",
                             "candidates": ["From a gym to a pool.", "From a shop to a road.",
                                            "From a car to a house."],
                             "answer": "From a shop to a road."}],
       "action_count": [{"video": "video7011.mp4", "question": "How many times did the person jump?",
                         "candidates": ["3", "5", "2", "4"], "answer": "5"}]}
MC = [("video7010", "What moves across the picture?", ["a red ball", "a green square", "yellow stripes"]),
      ("video7011", "Which color is the sky?", ["blue", "grey"])]


def write_model(root: Path, tokenizer: Path):
    g = torch.Generator().manual_seed(3)
    mdir = make_tiny_llama(root / "llama2", tokenizer, dim=64, n_layers=2, n_heads=4, seed=3, std=0.1)
    tok = load_tokenizer(root / "llama2" / "tokenizer.model")
    margs = TOPAArgs.from_params_json(mdir / "params.json", adapter_len=10, max_feats=T, vocab_size=tok.n_words)
    model = build_model(margs, load_meta_checkpoint(mdir))
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "gate" in n else 0.1))
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "scaler": None,
                 "args": argparse.Namespace(model="tiny")}, root / "topa.pth")
    (root / "data" / "textvid").mkdir(parents=True)
    torch.save(F.normalize(torch.randn(300, 768, generator=g), dim=-1).half(), root / "data" / "textvid" / "memory.pkl")


def write_annotations(data: Path):
    (data / "nextqa").mkdir(parents=True)
    with open(data / "nextqa" / "val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type"]
                   + [f"a{i}" for i in range(5)])
        for qid, (video, q, options, answer) in enumerate(NEXTQA):
            w.writerow([video, VIDEOS[video][0], 32, 24, q, answer, qid, "CW", *options])
    (data / "mvbench" / "json").mkdir(parents=True)
    for name in mvbench.TASKS:
        stem = mvbench.MVBENCH_TASKS[name][0]
        absent = [{"video": "absent.mp4", "question": "Is it there?", "candidates": ["yes", "no"], "answer": "no",
                   "start": 0, "end": 5}]
        (data / "mvbench" / "json" / f"{stem}.json").write_text(json.dumps(MVB.get(stem, absent)))
    (data / "msrvtt").mkdir()
    (data / "msrvtt" / "test_videodatainfo.json").write_text(json.dumps(
        {"info": {}, "videos": [{"video_id": v, "split": "test", "id": i} for i, v in enumerate(VIDEOS)],
         "sentences": [{"video_id": v, "caption": "noise flickers on a small screen", "sen_id": i}
                       for i, v in enumerate(VIDEOS)]}))


def mvbench_video(data: Path, stem: str) -> Path:
    folder = next(v[1] for v in mvbench.MVBENCH_TASKS.values() if v[0] == stem)
    return data / "mvbench" / "video" / folder


def jsonl(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory, fixtures_dir):
    """Model, videos, annotations; extract_features.py then eval.py on them: the oracle files."""
    import eval as eval_script
    import extract_features
    root = tmp_path_factory.mktemp("oracles")
    write_model(root, fixtures_dir / "llama2" / "tokenizer.model")
    clip = save_random_clip(root / "tiny-clip", seed=5)
    data = root / "data"
    write_annotations(data)
    for name, (n, fps) in VIDEOS.items():
        write_video(root / "videos" / f"{name}.mp4", n, fps, (32, 24), code=False)
    for stem, items in MVB.items():
        for it in items:
            mvbench_video(data, stem).mkdir(parents=True, exist_ok=True)
            os.link(root / "videos" / it["video"], mvbench_video(data, stem) / it["video"])
    common = ["--clip_model", str(clip), "--device", "cpu", "--num_workers", "0", "--quiet", "--data_root", str(data)]
    for dataset in ("nextqa", "msrvtt"):
        assert extract_features.main(common + ["--dataset", dataset, "--video_dir", str(root / "videos")]) == 0
    assert extract_features.main(common + ["--dataset", "mvbench", "--mvbench_root", str(data / "mvbench"),
                                           "--tasks", ",".join(MVB)]) == 0
    model = ["--model", "tiny", "--llama2", "--llama_model_path", str(root / "llama2"), "--adapter_len", "10",
             "--max_feats", str(T), "--resume", str(root / "topa.pth"), "--precision", "fp32", "--device", "cpu",
             "--num_workers", "0", "--data_root", str(data)]
    with pytest.MonkeyPatch.context() as mp:
        # the captions are the oracle here, not their COCO metrics (METEOR alone takes ~25 s of Java)
        mp.setattr(engine.generation, "coco_caption_metrics", lambda refs, preds, spice=False: {})
        for dataset, extra in (("nextqa", []), ("mvbench", ["--letter_constrained", "--skip_missing"]),
                               ("msrvtt", [])):
            eval_script.main(eval_script.get_args(model + ["--dataset", dataset, "--output_dir",
                                                           str(root / "results" / dataset), *extra]))
    w = {"root": root, "clip": clip, "data": data, "model_flags": model[:model.index("--num_workers")],
         "video": {name: str(root / "videos" / f"{name}.mp4") for name in VIDEOS}}
    res = root / "results"
    w["nextqa"] = jsonl(res / "nextqa" / "predictions_nextqa_val.jsonl")
    w["mvbench"] = [p for p in jsonl(res / "mvbench" / "predictions_mvbench_test.jsonl") if p["video"] != "absent.mp4"]
    w["msrvtt"] = {p["video"]: p for p in jsonl(res / "msrvtt" / "predictions_msrvtt_test.jsonl")}
    w["features"] = {ds: torch.load(data / ds / "clipvitl14.pth", weights_only=True)
                     for ds in ("nextqa", "mvbench", "msrvtt")}
    return w


@pytest.fixture(scope="module")
def qa(world):
    r = world["root"]
    model = ModelConfig(llama_model_path=str(r / "llama2"), model="tiny", adapter_len=10, max_feats=T, precision="fp32")
    return TOPAVideoQA(QAConfig(model=model, resume=str(r / "topa.pth"), clip_model=str(world["clip"]),
                                memory_path=str(world["data"] / "textvid" / "memory.pkl"), device="cpu"),
                       warn=lambda m: None)


def same_rows(api_rows: torch.Tensor, file_rows: torch.Tensor):
    """The API's fp32 features of its frames against the file's fp16 rows of the same frames (unit rows:
    fp16 rounding is ~1e-3; other frames of these noise videos differ by far more)."""
    a, b = F.normalize(api_rows.float(), dim=-1), F.normalize(file_rows.float(), dim=-1)
    assert a.shape == b.shape
    assert (a - b).abs().max() < 5e-3, (a - b).abs().max(dim=-1).values


def frames_of(rule: str, name: str) -> list:
    """The frames each protocol reads, written out from docs/extraction.md and docs/formats.md: 1 frame/s
    (row j = frame round(j * fps), halves up) fitted to T rows (row floor(j * m / T) of m); MSR-VTT's
    i * (n // T); MVBench's segments over the whole video (seg = (n - 1) / T, frame int(seg / 2 +
    round(seg * i)), rounding half to even)."""
    n, fps = VIDEOS[name]
    if rule == "fps1":
        rows = [math.floor(j * fps + Fraction(1, 2)) for j in range(n)]
        rows = [i for i in rows if i < n]
        return [rows[math.floor(j * len(rows) / T)] for j in range(T)]
    if rule == "strided":
        return [i * (n // T) for i in range(T)]
    seg = (n - 1) / T
    return [int(seg / 2 + round(seg * i)) for i in range(T)]


def mvbench_items():
    """(prediction key, video name, question, candidates) of the MVBench items, in eval.py's order."""
    out = []
    for name in mvbench.TASKS:
        stem = mvbench.MVBENCH_TASKS[name][0]
        out += [(f"{stem}/{i}", it["video"][:-4], it["question"], it["candidates"])
                for i, it in enumerate(MVB.get(stem, []))]
    return out


# ---------------------------------------------------------------- the Python API

def test_the_videos_make_every_rule_subsample(world):
    """1 frame/s gives 26 and 27 rows (27 s at 29.97 fps: frame round(27 * 29.97) = 809 is past the end),
    far more than the T = 10 each request feeds: every rule picks a subset."""
    assert {v: f.shape for v, f in world["features"]["nextqa"].items()} == \
        {"video7010": (26, 768), "video7011": (27, 768)}
    assert all(f.shape == (T, 768) for ds in ("mvbench", "msrvtt") for f in world["features"][ds].values())


def test_choose_equals_eval_py_on_the_extracted_features(world, qa):
    preds = {p["qid"]: p for p in world["nextqa"]}
    got = qa.choose_batch([(world["video"][v], q, o) for v, q, o, _ in NEXTQA])
    assert len(preds) == len(NEXTQA)
    for qid, ((video, _, options, _), c) in enumerate(zip(NEXTQA, got)):
        p = preds[f"{video}_{qid}"]
        assert c.index == p["prediction"] and c.option == options[p["prediction"]]
        assert max(abs(a - b) for a, b in zip(c.scores, p["scores"])) < 2e-3, (c.scores, p["scores"])
        # the rows the API fed are those eval.py fits from the 1 frame/s file
        assert c.frames.indices == frames_of("fps1", video)
        same_rows(c.frames.features, fit_frames(world["features"]["nextqa"][video].float(), T))


def test_describe_equals_eval_py_msrvtt(world, qa):
    for name, path in world["video"].items():
        a = qa.describe(path)
        assert a.text == world["msrvtt"][name]["caption"], name
        assert a.frames.indices == frames_of("strided", name)
        same_rows(a.frames.features, world["features"]["msrvtt"][name])


def test_mvbench_equals_eval_py_mvbench(world, qa):
    preds = {p["video"]: p for p in world["mvbench"]}
    assert len(preds) == len(world["mvbench"]) == 2
    for key, video, q, cands in mvbench_items():
        p = preds[f"{video}.mp4"]
        a = qa.mvbench(world["video"][video], q, cands)
        assert (a.letter, a.free_letter, a.text) == (p["prediction_constrained"], p["prediction"], p["text"]), key
        assert a.frames.indices == frames_of("segments", video)
        same_rows(a.frames.features, world["features"]["mvbench"][key])


# ---------------------------------------------------------------- ask.py, the demo, the lmms-eval plugin

def mvbench_line(p, candidates, sep: str) -> str:
    """The multiple-choice answer line of ask.py (sep: 4 spaces) and of the demo (sep: 1 space) written
    from eval.py's MVBench prediction: the constrained letter's option, and the free generation where it
    names another letter or none."""
    letter = p["prediction_constrained"]
    line = f"({letter}) {candidates['ABCDE'.index(letter)]}"
    return line + (f"{sep}(generated freely: {p['text']!r})" if p["prediction"] != letter else "")


def test_ask_py_prints_the_file_pipelines_answers(world, capsys):
    import ask as ask_script
    flags = world["model_flags"] + ["--clip_model", str(world["clip"]),
                                    "--memory_path", str(world["data"] / "textvid" / "memory.pkl")]

    def ask(video, *request):
        capsys.readouterr()
        line = ask_script.main(ask_script.get_args([world["video"][video], *request, *flags]))
        assert capsys.readouterr().out == line + "\n"     # the answer is the only line on stdout
        return line
    for name in VIDEOS:
        assert ask(name, "--describe") == world["msrvtt"][name]["caption"]
    preds = {p["video"]: p for p in world["mvbench"]}
    for _, video, q, cands in mvbench_items():
        assert ask(video, "--question", q, "--options", *cands) == mvbench_line(preds[f"{video}.mp4"], cands, "    ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_answers_as_the_file_pipeline(world):
    """app.py on this world's model, asked through gradio_client with the video uploaded."""
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    import app as app_script
    from engine.serve import ServeConfig
    args = app_script.get_args(world["model_flags"] + ["--clip_model", str(world["clip"]), "--memory_path",
                                                       str(world["data"] / "textvid" / "memory.pkl")])
    with app_script.running(args, ServeConfig(port=free_port())) as (_, url, _), \
            closing(gradio_client.Client(url, verbose=False)) as client:
        def ask(video, mode, question="", options=()):
            opts = list(options) + [""] * (app_script.N_OPTIONS - len(options))
            return client.predict(gradio_client.handle_file(world["video"][video]), mode, question, *opts,
                                  "protocol", "protocol", 0, [], api_name="/ask")
        preds = {p["qid"]: p for p in world["nextqa"]}
        for qid, (video, q, options, _) in enumerate(NEXTQA[::3]):
            p = preds[f"{video}_{qid * 3}"]
            k = p["prediction"]
            _, answer, chart, gallery = ask(video, "Multiple choice", q, options)
            assert answer == f"({'ABCDE'[k]}) {options[k]}"
            want = torch.softmax(-torch.tensor(p["scores"], dtype=torch.float64), 0)
            assert max(abs(row[1] - w) for row, w in zip(chart["value"]["data"], want.tolist())) < 1e-3
            assert [g["caption"].split(" · ")[0] for g in gallery] == [f"#{i}" for i in frames_of("fps1", video)]
        for name in VIDEOS:
            assert ask(name, "Describe")[1] == world["msrvtt"][name]["caption"]
        mvb = {p["video"]: p for p in world["mvbench"]}
        for _, video, q, cands in mvbench_items():
            assert ask(video, "Multiple choice (MVBench letters)", q, cands)[1] == \
                mvbench_line(mvb[f"{video}.mp4"], cands, " ")


def test_the_lmms_plugin_answers_as_the_file_pipeline(world):
    """engine/lmms.py's generate_until on MVBench's lmms-eval wording gives eval.py's MVBench letters."""
    pytest.importorskip("lmms_eval")
    from engine.lmms import TOPALmms
    from lmms_eval.api.instance import Instance
    r = world["root"]
    model = TOPALmms(llama_model_path=str(r / "llama2"), model="tiny", adapter_len="10", max_feats=str(T),
                     resume=str(r / "topa.pth"), clip_model=str(world["clip"]), precision="fp32", device="cpu",
                     memory_path=str(world["data"] / "textvid" / "memory.pkl"), batch_size=2)
    items = mvbench_items()
    docs = {i: {"video": world["video"][video]} for i, (_, video, _, _) in enumerate(items)}
    model.task_dict = {"mvb": {"test": docs}}

    def visual(doc):
        return [doc["video"]]
    # lmms-eval's MVBench prompt (lmms_eval/tasks/mvbench/utils.py)
    reqs = [Instance("generate_until", ("Question:" + q + "\nOption:\n" + "".join(
        f"({'ABCDE'[k]}) {c}\n" for k, c in enumerate(cands)) + "Only give the best option.\n",
        {"max_new_tokens": 16, "temperature": 0, "do_sample": False}, visual, i, "mvb", "test"), i,
        {"task": "mvb", "doc_id": i, "repeats": 1}) for i, (_, _, q, cands) in enumerate(items)]
    preds = {p["video"]: p for p in world["mvbench"]}
    assert model.generate_until(reqs) == [preds[f"{video}.mp4"]["prediction_constrained"] for _, video, _, _ in items]
