"""Byte check: run every inference and training path of a checkout on the toy and synthetic worlds, write
what came out and a manifest of it; compare two such folders. A refactor or a merge that must not change
behaviour shows no difference between the folder of the tree before and the one after.

    python bench/byte_check.py OUT [--repo DIR] [--worlds REF] [--only eval,train,ask,api,demo,lmms]
    python bench/byte_check.py --compare A B     # prints every difference; exit 1 on one, 0 when equal

A run takes about 3 minutes on 2 CPUs. Use ONE copy of this script for both trees (the reference and
the candidate), so that both run exactly the same requests, and let the candidate reuse the
reference's worlds (`--worlds`: the H.264 example videos and the pickled memory are not byte-identical
from one build to the next, so worlds built twice give different inputs):

    python bench/byte_check.py /tmp/ref --repo /path/to/main                  # the tree before
    python bench/byte_check.py /tmp/new --repo . --worlds /tmp/ref            # the tree after
    python bench/byte_check.py --compare /tmp/ref /tmp/new

What it runs, each step a subprocess in --repo (default: the checkout holding this file) with that repo
first on PYTHONPATH, one CPU thread (OMP_NUM_THREADS=1: the numbers do not depend on the load) and fp32:

  worlds  OUT/worlds/synthetic: `toyworld.synthetic.build` (seed 0; NExT-QA, EgoSchema, TextVid) plus tiny
          MVBench (all 20 task files), MSR-VTT and VATEX sets with seeded random features;
          OUT/worlds/toy: `toyworld.demo.build_toy` (tiny Llama, tiny CLIP, three H.264 videos) plus a
          frame folder (paths in world.json relative to it). Built with the --repo's toyworld, or copied
          from `--worlds REF` (an earlier OUT). Their files' digests are the manifest's "inputs": when
          those differ the worlds are not the same, and output differences may follow from that alone.
  eval    eval.py on the synthetic world: NExT-QA (packed scoring; --memory; --scoring full --memory),
          EgoSchema --memory, MVBench --letter_constrained, MVBench --no_memory --no_kv_cache, MSR-VTT
          and VATEX (caption metrics need Java; without it their step fails alike on both trees).
  train   train.py: two epochs of TextVid pre-alignment, then two of finetuning on NExT-QA from its
          last checkpoint (with the per-epoch evaluation, eval/epoch_*/ files).
  ask     ask.py on the toy world: --describe, an open --question, --question with --options, and a
          frame folder.
  api     the Python API (engine/api.py) on the toy world: features, choose, answer, describe, mvbench,
          loglikelihood, complete and their *_batch forms, over video files, a frame folder, frame
          arrays and feature tensors, with memory and frame-rule overrides (OUT/api.json).
  demo    app.DemoApp.ask, the demo's handler, in each of its four modes (OUT/demo.json).
  lmms    engine.lmms.TOPALmms (the lmms-eval plugin) generate_until (lettered and open prompts) and
          loglikelihood on lmms-eval's own Instance objects (OUT/lmms.json; skipped without lmms_eval).

The manifest, OUT/manifest.json: {"root": OUT, "repo": DIR, "inputs": {file: sha256}, "outputs": {file:
entry}}. The inputs are the worlds' files as the steps find them (caches a step writes there, such as
the TextVid index keyed by textvid.json's mtime, are neither inputs nor outputs). A text output's entry
is the sha256 of its normalised text: OUT's absolute path is written `<OUT>` and the repo's `<REPO>`,
and in `log.jsonl` the wall-clock fields (`time`, `*_seconds`, `*_per_s`) are dropped (every other
numeric field stays). A checkpoint's (`.pth`) entry holds, per key (nested keys joined by `/`), its
tensor's dtype, shape and byte digest, or its value's normalised repr, so the comparison names the keys
that differ. Each step's exit status is an output (`<step>.rc`), its stdout too (`<step>.stdout`);
stderr is kept beside them (`<step>.stderr`) for reading, never compared (progress bars, warnings). A
step that fails does not stop the others.

`--compare A B` lists: inputs that differ, outputs only in one folder, text outputs whose normalised
text differs (with the first differing lines), checkpoint keys that differ (with the largest absolute
difference of a tensor). It exits 1 when anything differs.
"""
import argparse
import dataclasses
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WALL_CLOCK = ("time",)                       # log.jsonl keys dropped as they are
WALL_CLOCK_SUFFIXES = ("_seconds", "_per_s")  # ... and keys ending so
SECTIONS = ("eval", "train", "ask", "api", "demo", "lmms")
THIS = Path(__file__).resolve()

# ---------------------------------------------------------------- worlds

MVB_QUESTIONS = [  # (question, candidates, answer): three items in each of the 20 task files
    ("What is the dog doing?", ["running", "jumping", "eating"], "jumping"),
    ("Where is the cat?", ["kitchen", "garden"], "garden"),
    ("How many birds are there?", ["one", "two", "three", "four"], "two"),
]


def write_generation_sets(data: Path, seed: int = 0):
    """Tiny MVBench (the 20 official task files), MSR-VTT and VATEX sets with seeded random features."""
    import torch

    from dataloader import mvbench
    g = torch.Generator().manual_seed(seed)
    jd = data / "mvbench" / "json"
    jd.mkdir(parents=True, exist_ok=True)
    feats = {}
    for k, name in enumerate(mvbench.TASKS):
        stem = mvbench.MVBENCH_TASKS[name][0]
        items = [{"video": f"v{k}_{i}.mp4", "question": q, "candidates": c, "answer": a, "start": 0.0, "end": 9.0}
                 for i, (q, c, a) in enumerate(MVB_QUESTIONS)]
        (jd / f"{stem}.json").write_text(json.dumps(items))
        feats.update({f"{stem}/{i}": torch.randn(10, 768, generator=g).half() for i in range(len(items))})
    torch.save(feats, data / "mvbench" / "clipvitl14.pth")
    (data / "msrvtt").mkdir(exist_ok=True)
    msr = {"info": {}, "videos": [{"video_id": f"video{7010 + i}", "split": "test", "id": i} for i in range(4)],
           "sentences": [{"video_id": f"video{7010 + i}", "caption": c, "sen_id": 10 * i + j}
                         for i in range(4) for j, c in enumerate(["a dog is running in a park",
                                                                  f"a cat sits in the garden {i}"])]}
    (data / "msrvtt" / "test_videodatainfo.json").write_text(json.dumps(msr))
    torch.save({v["video_id"]: torch.randn(12, 768, generator=g).half() for v in msr["videos"]},
               data / "msrvtt" / "clipvitl14.pth")
    (data / "vatex").mkdir(exist_ok=True)
    vatex = [{"videoID": f"vid{i}_000010_000020", "enCap": [f"A horse runs on the beach {i}.", "A duck swims."],
              "chCap": ["x"]} for i in range(3)]
    (data / "vatex" / "vatex_validation_v1.0.json").write_text(json.dumps(vatex))
    torch.save({v["videoID"]: torch.randn(8, 768, generator=g).half() for v in vatex},
               data / "vatex" / "clipvitl14.pth")


def build_worlds(out: Path):
    """(run in the repo's environment) the two worlds under out/worlds."""
    from toyworld.demo import build_toy, example_frames
    from toyworld.synthetic import build
    syn = out / "worlds" / "synthetic"
    build(syn, seed=0, n_textvid=24, n_nextqa=20, n_nextqa_train=10, n_egos=8, dim=64)
    write_generation_sets(syn / "data")
    toy = out / "worlds" / "toy"
    w = build_toy(toy)
    w = {k: [os.path.relpath(x, toy) for x in v] if isinstance(v, list) else
         os.path.relpath(v, toy) if k != "model" else v for k, v in w.items()}
    from PIL import Image
    folder = toy / "frames"
    folder.mkdir()
    for k, f in enumerate(example_frames((10, 90, 40), (200, 200, 250), "square", n=20)):
        Image.fromarray(f).save(folder / f"{k + 1:05d}.png")
    (toy / "world.json").write_text(json.dumps(w, indent=1))


# ---------------------------------------------------------------- the steps

def synthetic_flags(out: Path):
    w = out / "worlds" / "synthetic"
    return ["--llama_model_path", f"{w}/pretrained/llama2/", "--model", "tiny", "--llama2", "--data_root",
            f"{w}/data", "--max_feats", "10", "--adapter_len", "10", "--bias", "3.5", "--device", "cpu",
            "--precision", "fp32", "--num_workers", "0"]


def toy_world(out: Path) -> dict:
    """world.json with its paths made absolute."""
    toy = out / "worlds" / "toy"
    w = json.loads((toy / "world.json").read_text())
    return {k: [str(toy / x) for x in v] if isinstance(v, list) else str(toy / v) if k != "model" else v
            for k, v in w.items()}


def toy_flags(out: Path):
    w = toy_world(out)
    return ["--llama_model_path", w["llama_model_path"], "--model", "tiny", "--llama2", "--adapter_len", "10",
            "--max_feats", "10", "--resume", w["resume"], "--clip_model", w["clip_model"], "--memory_path",
            w["memory_path"], "--device", "cpu", "--precision", "fp32"]


def eval_steps(out: Path):
    res = out / "results" / "eval"
    runs = {"nextqa": ["--dataset", "nextqa"], "nextqa_memory": ["--dataset", "nextqa", "--memory"],
            "nextqa_full": ["--dataset", "nextqa", "--memory", "--scoring", "full"],
            "egos_memory": ["--dataset", "egos", "--memory", "--max_seq_len", "600"],
            "mvbench_letters": ["--dataset", "mvbench", "--letter_constrained"],
            "mvbench_nokv": ["--dataset", "mvbench", "--no_memory", "--no_kv_cache"],
            "msrvtt": ["--dataset", "msrvtt"], "vatex": ["--dataset", "vatex"]}
    return [(f"eval_{k}", ["eval.py", *synthetic_flags(out), *v, "--batch_size", "3", "--output_dir", str(res / k)])
            for k, v in runs.items()]


def train_steps(out: Path):
    res = out / "results" / "train"
    common = [*synthetic_flags(out), "--max_seq_len", "150", "--batch_size", "8", "--accum_iter", "1", "--epochs", "2",
              "--warmup_epochs", "1", "--lr", "2e-2", "--weight_decay", "0.0", "--log_every", "2", "--no_tensorboard"]
    pretrained = str(res / "pretrain" / "checkpoint_last.pth")
    return [("train_pretrain", ["train.py", *common, "--textvid", "--output_dir", str(res / "pretrain")]),
            ("train_finetune", ["train.py", *common, "--finetune", "--resume", pretrained, "--dataset", "nextqa",
                                "--memory", "--output_dir", str(res / "finetune")])]


def ask_steps(out: Path):
    toy = out / "worlds" / "toy"
    video = str(toy / "red_ball.mp4")
    return [("ask_describe", ["ask.py", video, "--describe", *toy_flags(out)]),
            ("ask_open", ["ask.py", video, "--question", "What is moving?", *toy_flags(out)]),
            ("ask_options", ["ask.py", str(toy / "green_square.mp4"), "--question", "What is moving?", "--options",
                             "a red ball", "a green square", "yellow stripes", *toy_flags(out)]),
            ("ask_folder", ["ask.py", str(toy / "frames"), "--question", "What is it?", "--options", "a square",
                            "a ball", "--no_memory", *toy_flags(out)])]


def driver_steps(out: Path, sections):
    return [(f"driver_{s}", [str(THIS), "--driver", s, str(out)]) for s in ("api", "demo", "lmms") if s in sections]


def run_step(name: str, argv, out: Path, repo: Path):
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    t = time.time()
    p = subprocess.run([sys.executable, *argv], cwd=repo, env=env, capture_output=True, text=True)
    steps = out / "steps"
    steps.mkdir(exist_ok=True)
    (steps / f"{name}.stdout").write_text(p.stdout)
    (steps / f"{name}.stderr").write_text(p.stderr)
    (steps / f"{name}.rc").write_text(f"{p.returncode}\n")
    status = "ok" if p.returncode == 0 else f"FAILED (rc {p.returncode}; see steps/{name}.stderr)"
    print(f"  {name:<22} {time.time() - t:6.1f} s  {status}", flush=True)
    return p.returncode


# ---------------------------------------------------------------- drivers (run inside the repo)

OUT_ROOT = [""]   # the driver's OUT: a path outside it (a temporary file the code under test wrote) is its content


def plain(x):
    """Results as JSON: dataclasses as dicts, tensors and arrays as (dtype, shape, sha256 of the bytes), a
    file outside OUT (e.g. a frame the demo wrote to its temporary folder) as its name and content digest."""
    import numpy as np
    import torch
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if torch.is_tensor(x):
        t = x.detach().cpu()
        return {"tensor": str(t.dtype), "shape": list(t.shape), "sha256": tensor_sha256(t)}
    if isinstance(x, np.ndarray):
        return {"array": str(x.dtype), "shape": list(x.shape), "sha256": hashlib.sha256(x.tobytes()).hexdigest()}
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if hasattr(x, "to_dict") and callable(x.to_dict):   # pandas DataFrame
        return plain(x.to_dict(orient="list"))
    if isinstance(x, str) and os.path.isabs(x) and os.path.isfile(x) and not x.startswith(OUT_ROOT[0]):
        return {"file": os.path.basename(x), "sha256": sha256(Path(x).read_bytes())}
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


class Recorder:
    """Calls and their results (or the error they raised), in order."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, fn, *a, **kw):
        try:
            got = plain(fn(*a, **kw))
        except Exception as e:  # a behaviour too: recorded, and the driver goes on
            got = {"error": f"{type(e).__name__}: {e}"}
        self.calls.append({"call": name, "result": got})
        return got


def toy_api(out: Path, **kw):
    from engine.api import QAConfig, TOPAVideoQA
    from llama.build import ModelConfig
    w = toy_world(out)
    model = ModelConfig(llama_model_path=w["llama_model_path"], model="tiny", adapter_len=10, max_feats=10,
                        precision="fp32")
    cfg = QAConfig(model=model, resume=w["resume"], clip_model=w["clip_model"], memory_path=w["memory_path"],
                   device="cpu", batch_size=3, **kw)
    return TOPAVideoQA(cfg, warn=lambda m: None), w


def driver_api(out: Path):
    import torch

    from text import prompts
    from toyworld.demo import example_frames
    qa, w = toy_api(out)
    red, green, stripes = w["examples"]
    folder = str(out / "worlds" / "toy" / "frames")
    frames = example_frames((120, 30, 30), (20, 240, 20), "disc", n=30)
    feats = torch.randn(14, 768, generator=torch.Generator().manual_seed(1))
    opts = ["a red ball", "a green square", "yellow stripes"]
    r = Recorder()
    for v in (red, folder):
        r("features", qa.features, v)
    r("features(array, fps=6)", qa.features, frames, fps=6)
    r("choose(file)", qa.choose, red, "What is moving?", opts)
    r("choose(folder, memory)", qa.choose, folder, "What is it?", ["a square", "a ball"], memory=True)
    r("choose(array, frames=segments)", qa.choose, frames, "Which color?", ["red", "green", "blue", "white"],
      frames="segments")
    r("choose(tensor, style)", qa.choose, feats, "What happens?", opts + ["nothing", "a dog runs"],
      style=prompts.EGOSCHEMA)
    r("choose_batch", qa.choose_batch, [(red, "What is moving?", opts), (green, "What is moving?", opts),
                                        (stripes, "Where?", ["left", "right"]), (feats, "What?", opts),
                                        (folder, "What is it?", ["a square", "a ball", "a cat"])], memory=False)
    r("answer", qa.answer, red, "What is moving?")
    r("answer_batch", qa.answer_batch, [(green, "Where is it?"), (folder, "What is it?"), (feats, "Why?"),
                                        (stripes, "What color?")], max_new_tokens=6, memory=False)
    r("describe", qa.describe, stripes)
    r("describe_batch", qa.describe_batch, [red, folder, frames, feats], frames="fps1", max_new_tokens=7)
    r("mvbench", qa.mvbench, red, "What is moving?", opts)
    r("mvbench_batch", qa.mvbench_batch, [(green, "What is moving?", opts), (feats, "Which?", ["x", "y"]),
                                          (folder, "What is it?", ["a square", "a ball", "a cat", "a dog", "a cup"])],
      memory=False, max_new_tokens=3)
    r("loglikelihood", qa.loglikelihood, red, "Question: what moves?\nAnswer:", " a red ball")
    r("loglikelihood_batch", qa.loglikelihood_batch, [(red, "Question: what moves?\nAnswer: ", "a ball"),
                                                      (green, "What color is it?", " green"),
                                                      (feats, "Video of", " a cat sitting"),
                                                      (folder, "It is", " a square")], with_greedy=True)
    r("complete", qa.complete, green, "Question: What is moving?\nAnswer:")
    r("complete_batch", qa.complete_batch, [(red, "It is a video of"), (stripes, "Question: why?\nAnswer:"),
                                            (feats, "The")], until=("\n", "."), max_new_tokens=12, memory=False)
    r("stats", lambda: dict(qa.stats))
    return r.calls


def demo_values(app, memory, rule):
    """The handler's values of a memory choice (None, True, False) and a frame rule (None: the protocol's),
    in the app's convention (its MEMORY table; frame labels in a FRAMES table, or the rule's name)."""
    mem = next(k for k, v in app.MEMORY.items() if v is memory)
    if hasattr(app, "FRAMES"):
        return mem, next(k for k, v in app.FRAMES.items() if v == rule)
    return mem, rule or next(k for k, v in app.MEMORY.items() if v is None)


def driver_demo(out: Path):
    import app as app_module
    qa, w = toy_api(out)
    app = app_module.DemoApp(qa, w["examples"], toy=True)
    red, green = w["examples"][:2]
    opts = ["a red ball", "a green square", "yellow stripes", "", ""]
    r = Recorder()
    asks = [("open", red, "Open question", "What is moving?", None, None, 0),
            ("describe", green, "Describe", "", False, "strided", 5),
            ("choice", red, "Multiple choice", "What is moving?", True, None, 0),
            ("mvbench", green, "Multiple choice (MVBench letters)", "What is moving?", None, "segments", 0)]
    for name, video, mode, question, memory, rule, new in asks:
        r(name, app.ask, video, mode, question, *opts, *demo_values(app_module, memory, rule), new, [])
    return r.calls


def driver_lmms(out: Path):
    try:
        from lmms_eval.api.instance import Instance
    except ImportError as e:
        return [{"call": "import lmms_eval", "result": {"skipped": str(e)}}]
    from engine.lmms import TOPALmms
    w = toy_world(out)
    args = {"llama_model_path": w["llama_model_path"], "model": "tiny", "adapter_len": "10", "resume": w["resume"],
            "clip_model": w["clip_model"], "memory_path": w["memory_path"], "device": "cpu", "precision": "fp32",
            "batch_size": "2"}
    model = TOPALmms(**args)
    docs = {i: {"video": v} for i, v in enumerate(w["examples"])}
    model.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [doc["video"]]
    mc = "Question: What is moving?\nOptions:\n(A) a red ball\n(B) a green square\n(C) yellow stripes\nAnswer:"
    gen = [(mc, {}, 0), (mc, {}, 1), ("Question: What is moving?\nAnswer:", {"until": ["\n"], "max_new_tokens": 6}, 2),
           ("Describe the video.", {"until": ["."], "max_new_tokens": 9}, 0),
           ("Which?\nA. left\nB. right\nThe best answer is:", {}, 2)]
    ll = [("Question: what moves?\nAnswer:", " a red ball", 0), ("What color is it? ", "green", 1),
          ("It is", " yellow stripes", 2)]
    r = Recorder()
    inst = [Instance("generate_until", (c, k, visual, d, "t", "test"), i, {"task": "t", "doc_id": d, "repeats": 1})
            for i, (c, k, d) in enumerate(gen)]
    r("generate_until", model.generate_until, inst)
    inst = [Instance("loglikelihood", (c, t, visual, d, "t", "test"), i, {"task": "t", "doc_id": d, "repeats": 1})
            for i, (c, t, d) in enumerate(ll)]
    r("loglikelihood", model.loglikelihood, inst)
    r("stats", lambda: dict(model.qa.stats))
    return r.calls


def run_driver(kind: str, out: Path):
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    OUT_ROOT[0] = str(out)
    calls = {"api": driver_api, "demo": driver_demo, "lmms": driver_lmms, "worlds": None}
    if kind == "worlds":
        build_worlds(out)
        return
    got = calls[kind](out)
    (out / "results" / f"{kind}.json").write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- the manifest

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(t) -> str:
    """The digest of a tensor's bytes (any dtype, bf16 included)."""
    import torch
    return sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def normalise_text(text: str, roots) -> str:
    for path, name in roots:
        text = text.replace(path, name)
    return text


def normalise_log(text: str) -> str:
    lines = []
    for line in text.splitlines():
        row = json.loads(line)
        row = {k: v for k, v in row.items() if k not in WALL_CLOCK and not k.endswith(WALL_CLOCK_SUFFIXES)}
        lines.append(json.dumps(row, sort_keys=True))
    return "\n".join(lines) + "\n"


def normalised(path: Path, roots) -> str:
    text = normalise_text(path.read_text(errors="replace"), roots)
    return normalise_log(text) if path.name == "log.jsonl" else text


def checkpoint_entry(path: Path, roots) -> dict:
    """{key: "tensor dtype shape sha256" | "value repr"} of a torch file, nested keys joined by '/'."""
    import argparse as ap

    import torch
    with torch.serialization.safe_globals([ap.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    flat = {}

    def walk(x, key):
        if isinstance(x, ap.Namespace):
            x = vars(x)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}/{k}" if key else str(k))
        elif isinstance(x, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, dict) for v in x):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")
        elif torch.is_tensor(x):
            flat[key] = f"tensor {x.dtype} {list(x.shape)} {tensor_sha256(x)}"
        else:
            flat[key] = "value " + normalise_text(repr(x), roots)
    walk(obj, "")
    return flat


def world_digests(out: Path) -> dict:
    """{file: sha256} of the worlds as the steps find them (caches the steps write there later, e.g. the
    TextVid index keyed by textvid.json's mtime, are neither inputs nor outputs)."""
    return {str(p.relative_to(out)): sha256(p.read_bytes()) for p in sorted((out / "worlds").rglob("*")) if p.is_file()}


def write_manifest(out: Path, repo: Path, inputs: dict):
    roots = [(str(out), "<OUT>"), (str(repo), "<REPO>")]
    outputs = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or rel.parts[0] == "worlds" or p.name == "manifest.json" or p.suffix == ".stderr" \
                or p.name.endswith(".lock") or p.name.startswith("worlds."):
            continue
        outputs[str(rel)] = checkpoint_entry(p, roots) if p.suffix == ".pth" else sha256(normalised(p, roots).encode())
    manifest = {"root": str(out), "repo": str(repo), "inputs": inputs, "outputs": outputs}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


# ---------------------------------------------------------------- compare

def tensor_gap(a: Path, b: Path, key: str) -> str:
    import argparse as ap

    import torch
    try:
        with torch.serialization.safe_globals([ap.Namespace]):
            x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
        for k in key.split("/"):
            x, y = (vars(v) if isinstance(v, ap.Namespace) else v for v in (x, y))
            x, y = (v[int(k)] if isinstance(v, (list, tuple)) else v[k] for v in (x, y))
        if x.shape == y.shape and x.is_floating_point():
            return f" (max |a - b| = {(x.double() - y.double()).abs().max().item():.3e})"
    except Exception:  # only a hint; the difference itself is already known
        pass
    return ""


def compare(a: Path, b: Path) -> int:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    n = 0

    def say(line):
        nonlocal n
        n += 1
        print(line)
    for k in sorted(set(ma["inputs"]) | set(mb["inputs"])):
        if ma["inputs"].get(k) != mb["inputs"].get(k):
            say(f"input  {k}: {'differs' if k in ma['inputs'] and k in mb['inputs'] else 'only in one folder'} "
                "(the worlds were not built alike)")
    if n:
        print("  (inputs differ: run the second tree with --worlds FIRST, so that both answer the same worlds)")
    oa, ob = ma["outputs"], mb["outputs"]
    for k in sorted(set(oa) | set(ob)):
        if k not in oa or k not in ob:
            say(f"output {k}: only in {b if k in ob else a}")
            continue
        if oa[k] == ob[k]:
            continue
        if isinstance(oa[k], dict):
            for key in sorted(set(oa[k]) | set(ob[k])):
                va, vb = oa[k].get(key), ob[k].get(key)
                if va != vb:
                    gap = tensor_gap(a / k, b / k, key) if va and vb and va.startswith("tensor") else ""
                    say(f"output {k} [{key}]: {va} != {vb}{gap}")
            continue
        say(f"output {k}: differs")
        ta = normalised(a / k, [(ma["root"], "<OUT>"), (ma["repo"], "<REPO>")]).splitlines()
        tb = normalised(b / k, [(mb["root"], "<OUT>"), (mb["repo"], "<REPO>")]).splitlines()
        diff = [d for d in difflib.unified_diff(ta, tb, str(a / k), str(b / k), n=0, lineterm="")]
        for line in diff[:24]:
            print("    " + line[:300])
        if len(diff) > 24:
            print(f"    ... ({len(diff) - 24} more diff lines)")
    print(f"{n} differences" if n else f"no difference ({len(oa)} outputs, {len(ma['inputs'])} inputs)")
    return 1 if n else 0


# ---------------------------------------------------------------- main

def copy_worlds(src: Path, out: Path):
    """An earlier OUT's worlds (its manifest's inputs only: not the caches its steps wrote there), or a
    worlds folder as it is."""
    manifest = src / "manifest.json"
    if manifest.is_file():
        for rel in json.loads(manifest.read_text())["inputs"]:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, out / rel)
    else:
        shutil.copytree(src / "worlds" if (src / "worlds").is_dir() else src, out / "worlds", symlinks=True)
    print(f"  worlds copied from {src}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="the folder to write (it must not exist, or be empty)")
    p.add_argument("--repo", default=str(THIS.parents[1]), help="the checkout to run (default: this file's)")
    p.add_argument("--worlds", default=None, help="copy the worlds of an earlier OUT instead of building them")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two folders this script wrote")
    p.add_argument("--driver", nargs=2, metavar=("KIND", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.driver:
        return run_driver(a.driver[0], Path(a.driver[1]))
    if a.compare:
        return compare(Path(a.compare[0]).resolve(), Path(a.compare[1]).resolve())
    if not a.out:
        p.error("give OUT (a folder to write) or --compare A B")
    out, repo = Path(a.out).resolve(), Path(a.repo).resolve()
    sections = [s for s in a.only.split(",") if s]
    bad = set(sections) - set(SECTIONS)
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(sorted(bad))}")
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} exists and is not empty")
    (out / "results").mkdir(parents=True, exist_ok=True)
    print(f"byte check of {repo} -> {out}", flush=True)
    t = time.time()
    if a.worlds:
        copy_worlds(Path(a.worlds).resolve(), out)
    elif run_step("worlds", [str(THIS), "--driver", "worlds", str(out)], out, repo):
        print((out / "steps" / "worlds.stderr").read_text()[-3000:], file=sys.stderr)
        return 2
    inputs = world_digests(out)
    steps = []
    for name, make in (("eval", eval_steps), ("train", train_steps), ("ask", ask_steps)):
        if name in sections:
            steps += make(out)
    failed = [name for name, argv in steps + driver_steps(out, sections) if run_step(name, argv, out, repo)]
    for lock in out.rglob("*.lock"):
        lock.unlink()
    m = write_manifest(out, repo, inputs)
    print(f"{len(m['outputs'])} outputs, {len(m['inputs'])} inputs in {out / 'manifest.json'} ({time.time() - t:.0f} s)"
          + (f"; failed steps: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
