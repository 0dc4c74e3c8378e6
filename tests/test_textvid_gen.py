"""Your own TextVid (textvid/, scripts/textvid.sh): tiny chat Llamas in Hugging Face format (toyworld/chat.py)
write tideos through both writers, and what they write is checked, encoded, pre-aligned on and evaluated.

* the local writer (--hf_model, llguidance-constrained decoding of a random model) through the whole chain
  of scripts/textvid.sh: every tideo passes the dataset's checks, extract_features.py encodes the folder,
  train.py pre-aligns one epoch on it, eval.py evaluates with the new memory;
* the HTTP writer against a real `transformers serve` on 127.0.0.1 (it ignores response_format): a model
  taught known answers (a valid tideo, repeated options, no JSON, a wrong letter, a near-duplicate, an answer
  past --max_tokens) answers greedily, so every outcome is known in advance. Concurrent requests, retries
  while the server is stopped and started again, every rejection listed with its reason, a resume after
  SIGKILL and a run split into two shards, all giving the file of the uninterrupted run byte for byte;
* the prompt's template and schema from files, and a malformed one as a one-line error.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dataloader.textvid import TextVidDataset, parse_tideo
from text.prompts import PromptBuilder
from text.tokenizer import load_tokenizer
from textvid import generate
from textvid.config import Shape
from textvid.prompt import Prompt
from textvid.seeds import Seed, plan_jobs, read_seeds
from util.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# a schema with short strings: a random model fills every string to its maxLength
SMALL_SCHEMA = {
    "type": "object",
    "properties": {
        "frames": {"type": "array", "items": {"type": "object", "properties": {
            "caption": {"type": "string", "minLength": 1, "maxLength": 16},
            "objects": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 12}}},
            "required": ["caption", "objects"], "additionalProperties": False}},
        "QAs": {"type": "array", "items": {"type": "object", "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": 16},
            "options": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 10}},
            "answer": {"type": "string", "enum": ["A", "B", "C", "D", "E"]},
            "answer_open_ended": {"type": "string", "minLength": 1, "maxLength": 16}},
            "required": ["question", "options", "answer", "answer_open_ended"], "additionalProperties": False}},
        "global_video_caption": {"type": "string", "minLength": 1, "maxLength": 24}},
    "required": ["frames", "QAs", "global_video_caption"], "additionalProperties": False}
SHORT_TEMPLATE = "Tideo of: $caption\n"
TINY = "--model tiny --adapter_len 4 --adapter_layer 2 --device cpu --precision fp32 --num_workers 0"


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TQDM_DISABLE="1", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        e.pop(k, None)
    return e


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    from toyworld.chat import make_tiny_chat_llama
    return make_tiny_chat_llama(tmp_path_factory.mktemp("writer") / "tiny-chat", seed=0)


def own_checks(t: dict, frames=(2, 3), objects=(1, 2), qas=(1, 2)):
    """What a generated tideo must be, written out here (not the code under test)."""
    assert frames[0] <= len(t["frames"]) <= frames[1]
    for f in t["frames"]:
        assert list(f)[0] == "caption" and objects[0] <= len(f) - 1 <= objects[1]
        assert all(isinstance(v, str) and v.strip() for v in f.values())
    assert qas[0] <= len(t["QAs"]) <= qas[1]
    for qa in t["QAs"]:
        assert len(qa["options"]) == 5 and qa["answer"] in "ABCDE"
        assert len({" ".join(o.casefold().split()) for o in qa["options"]}) == 5
        assert qa["question"].strip() and qa["answer_open_ended"].strip()
    assert t["global_video_caption"].strip()


# ---------------------------------------------------------------- the local writer, the whole chain

def test_script_writes_encodes_prealigns_and_evaluates(tmp_path, chat_dir, tiny_world):
    from toyworld.videos import save_random_clip
    clip = save_random_clip(tmp_path / "clip")
    schema = tmp_path / "small.schema.json"
    schema.write_text(json.dumps(SMALL_SCHEMA))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"caption": "a dog runs after a ball", "domain": "pets"}\n\n'
                     '{"caption": "a surgeon closes a wound"}\n')
    dom, ckpt, results = tmp_path / "dom", tmp_path / "ckpt", tmp_path / "results"
    e = env(SEEDS=str(seeds), WRITER=f"--hf_model {chat_dir}", DOMAIN_ROOT=str(dom), OUTPUT_DIR=str(ckpt),
            GEN_ARGS=f"--frames 2-3 --objects 1-2 --qas 1-2 --per_seed 2 --schema {schema} --batch_size 4 "
                     "--max_tokens 600 --device cpu --quiet",
            CLIP=str(clip), LLAMA="llama2_7b", LLAMA_PATH=str(tiny_world["root"] / "pretrained" / "llama2"),
            TORCHRUN="python", NPROC="1", EPOCHS="1", BATCH="4", ACCUM="1", EVAL_DATASET="nextqa",
            DATA_ROOT=str(tiny_world["root"] / "data"), EVAL_OUT=str(results),
            EVAL_ARGS=f"{TINY} --batch_size 20")
    train_args = [*TINY.split(), "--no_tensorboard", "--max_seq_len", "64", "--lr", "1e-2"]
    r = subprocess.run(["bash", str(REPO / "scripts" / "textvid.sh"), *train_args], env=e, cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout[r.stdout.index("textvid.generate, shard"):r.stdout.index("wrote ")])
    folder = dom / "textvid"
    tideos = json.loads((folder / "textvid.json").read_text())
    given_up = json.loads((folder / "rejected.json").read_text())
    jobs = plan_jobs(read_seeds(seeds), 2, 0)
    assert [t["idx"] for t in tideos] + [g["idx"] for g in given_up] != []
    assert sorted([t["idx"] for t in tideos] + [g["idx"] for g in given_up]) == sorted(j.idx for j in jobs)
    assert len(tideos) >= 3
    for pos, t in enumerate(tideos):
        parse_tideo(t, "textvid.json", pos, need_caption=True)
        own_checks(t)
    assert tideos[0]["seed"] == {"line": 1, "caption": "a dog runs after a ball", "domain": "pets"}
    # the folder is a TextVid: the dataset loads it (its checks, a features file per tideo) and reads items
    builder = PromptBuilder(load_tokenizer(tiny_world["root"] / "pretrained" / "llama2" / "tokenizer.model"), 10)
    ds = TextVidDataset(dom, builder, video_caption=True)
    assert len(ds) == len(tideos) and ds[0].video.shape == (10, 768)
    texts = (folder / "frame_texts.txt").read_text().splitlines()
    assert set(texts) == {" ".join(v.split()) for t in tideos for f in t["frames"] for v in f.values()}
    from util.files import load_pickled_tensor
    assert load_pickled_tensor(folder / "memory.pkl").shape == (len(texts), 768)
    log = [json.loads(x) for x in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [x["type"] for x in log if x["type"] == "epoch"] == ["epoch"] and (ckpt / "checkpoint_0.pth").is_file()
    assert any(results.rglob("*.json")), "no evaluation results"


# ---------------------------------------------------------------- the HTTP writer against a real server

def tideo_answer(subject: str, answer: str = "A", options=None, words: str = "") -> str:
    return json.dumps({
        "frames": [{"caption": f"A {subject} moves{words}.", "objects": [f"{subject}: brown"]},
                   {"caption": f"The {subject} stops.", "objects": [f"{subject}: tired"]}],
        "QAs": [{"question": "Who moves?", "options": options or [subject, "cat", "cow", "fox", "bee"],
                 "answer": answer, "answer_open_ended": f"A {subject}."}],
        "global_video_caption": f"A {subject} moves, stops."})


# seed caption -> the answer the taught model gives, and what becomes of it (reasons of both tries)
TAUGHT = {
    "a dog runs": (tideo_answer("dog"), None),
    "a chef cuts onions": (tideo_answer("chef", options=["knife", "a  KNIFE", "cup", "a knife", "hat"]),
                           "options not distinct"),
    "a red car turns left": (tideo_answer("car", answer="C"), None),
    "a man plays guitar": ("Sorry, I cannot write that.", "not JSON"),
    "two kids swim": (tideo_answer("kid", answer="F"), "dataset check"),
    "a cat sleeps": (tideo_answer("cat", words=" slowly and softly across the long sunny room" * 3), "truncated"),
}
# line 6 repeats line 1: the same prompt, the same answer, dropped as a near-duplicate of line 1's tideo
SEED_LINES = ["a dog runs", "a chef cuts onions", "a red car turns left", "a man plays guitar", "two kids swim",
              "a dog runs", "a cat sleeps"]
HTTP_FLAGS = ["--frames", "1-2", "--objects", "1-1", "--qas", "1-1", "--max_tries", "2", "--temperature", "0",
              "--max_tokens", "200", "--concurrency", "3", "--retries", "10", "--timeout", "120", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve DIR` on 127.0.0.1 (a real OpenAI-compatible server), stopped and started at will."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir, self.log, self.port, self.proc = model_dir, log, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait: float = 180):
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli), "serve", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--log-level", "warning"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"the server did not come up in {wait} s: {self.log.read_text()[-2000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(chat_dir, http_inputs, tmp_path_factory):
    """A copy of the random chat model taught TAUGHT's answers to the prompts of SHORT_TEMPLATE, served."""
    import shutil

    from textvid.config import GenConfig
    from toyworld.chat import teach
    root = tmp_path_factory.mktemp("served")
    model = root / "taught-chat"
    shutil.copytree(chat_dir, model)
    prompt = Prompt.load(http_inputs[1])
    teach(model, [(prompt.render(c, GenConfig.domain), a) for c, (a, _) in TAUGHT.items()])
    s = Server(model, root / "server.log")
    s.start()
    yield s
    s.stop()


def http_args(server, seeds: Path, out: Path, template: Path, *extra) -> list:
    return ["--seeds", str(seeds), "--out", str(out), "--base_url", server.url, "--model", str(server.model_dir),
            "--template", str(template), *HTTP_FLAGS, *map(str, extra)]


@pytest.fixture(scope="module")
def http_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("http_inputs")
    (d / "seeds.txt").write_text("\n".join(SEED_LINES) + "\n")
    (d / "short.txt").write_text(SHORT_TEMPLATE)
    return d / "seeds.txt", d / "short.txt"


def part_lines(out: Path) -> int:
    parts = list((out / "generate").glob("part-*.jsonl")) if (out / "generate").is_dir() else []
    return sum(p.read_text().count("\n") for p in parts)


def wait_for_lines(out: Path, n: int, proc, limit: float = 300):
    end = time.monotonic() + limit
    while part_lines(out) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no answer came"
        time.sleep(0.05)


def test_http_writer_retries_rejects_resumes_and_shards(server, http_inputs, tmp_path, capsys):
    seeds, template = http_inputs
    # A: uninterrupted but for the server, stopped after the first answer and started again
    a = tmp_path / "a"
    proc = subprocess.Popen([sys.executable, "-m", "textvid.generate", *http_args(server, seeds, a, template)],
                            env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(a, 1, proc)
    server.stop()
    time.sleep(2)
    server.start()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "Connection refused" in err and "retry 1 of 10" in err, err
    with capsys.disabled():
        print(out)
    table = dict(line.strip().rsplit(None, 1) for line in out.splitlines()[1:] if line.startswith("  "))
    assert table["seeds asked"] == "7" and table["tideos written"] == "2"
    assert table["in flight (peak)"] == "3"          # --concurrency 3 requests at once
    tideos = json.loads((a / "textvid.json").read_text())
    given_up = json.loads((a / "rejected.json").read_text())
    jobs = plan_jobs(read_seeds(seeds), 1, 0)
    assert [t["idx"] for t in tideos] == [jobs[0].idx, jobs[2].idx]
    assert [t["QAs"][0]["answer"] for t in tideos] == ["A", "C"]
    for pos, t in enumerate(tideos):
        parse_tideo(t, "textvid.json", pos, need_caption=True)
        own_checks(t, frames=(1, 2), objects=(1, 1), qas=(1, 1))
    want = {j.idx: TAUGHT[j.seed.caption][1] or "near-duplicate" for j in jobs if j.order not in (0, 2)}
    assert {g["idx"]: [x["reason"] for x in g["tries"]] for g in given_up} == {k: [v, v] for k, v in want.items()}
    assert [g["line"] for g in given_up] == [2, 4, 5, 6, 7]
    assert "same text as tideo " + jobs[0].idx in given_up[3]["tries"][0]["message"]
    for reason in set(want.values()):
        assert int(table[reason]) == 2 * list(want.values()).count(reason)

    # B: killed (SIGKILL) after two answers, then the same command: the same files as A's
    b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "textvid.generate", *http_args(server, seeds, b, template)],
                            env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(b, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = part_lines(b)
    assert done_before < 12 and not (b / "textvid.json").exists()
    generate.main(generate.get_args(http_args(server, seeds, b, template)))
    assert part_lines(b) == 12                       # each of the 12 answers once: nothing asked twice
    for name in ("textvid.json", "rejected.json", "frame_texts.txt"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name

    # C: two shards into one folder; the last to finish writes the same files
    c = tmp_path / "c"
    generate.main(generate.get_args(http_args(server, seeds, c, template, "--shard", "1/2")))
    assert not (c / "textvid.json").exists() and "waits for" in capsys.readouterr().out
    generate.main(generate.get_args(http_args(server, seeds, c, template, "--shard", "0/2")))
    for name in ("textvid.json", "rejected.json", "frame_texts.txt"):
        assert (c / name).read_bytes() == (a / name).read_bytes(), name


# ---------------------------------------------------------------- the prompt as data, bad input

def test_template_and_schema_come_from_files(tmp_path):
    tpl = tmp_path / "mine.txt"
    tpl.write_text("Video: $caption ($domain). ${min_frames}-$max_frames frames, $min_qas-$max_qas QAs, "
                   "$n_options options, $$5 a tideo.\n$schema")
    schema = tmp_path / "mine.schema.json"
    schema.write_text(json.dumps(SMALL_SCHEMA))
    p = Prompt.load(tpl, schema, Shape(frames=(3, 7), objects=(1, 2), qas=(2, 4)))
    text = p.render("a dog runs", "pets")
    assert text.startswith("Video: a dog runs (pets). 3-7 frames, 2-4 QAs, 5 options, $5 a tideo.\n{")
    props = p.schema["properties"]
    assert (props["frames"]["minItems"], props["frames"]["maxItems"]) == (3, 7)
    assert props["frames"]["items"]["properties"]["objects"]["maxItems"] == 2
    assert props["QAs"]["items"]["properties"]["options"]["minItems"] == 5
    assert json.loads(text.split("\n", 1)[1]) == p.schema      # the schema in the prompt is the one enforced
    assert props["frames"]["items"]["properties"]["caption"]["maxLength"] == 16   # the file's own settings stay
    default = Prompt.load()
    text = default.render("a cat naps", "pets")
    assert "$" not in text and "a cat naps" in text and "5 to 15 frames" in text


BAD_FILES = {  # file name, content -> the one line
    ("t.txt", "Video: $caption costs 5$\n"): "t.txt: line 1: '$' must start a placeholder",
    ("t.txt", "Video: $caption\n$frames frames\n"): "t.txt: line 2: unknown placeholder $frames (known: $caption",
    ("t.txt", "A video of a dog.\n"): "t.txt: the template never uses $caption",
    ("s.json", '{"type": "object",\n "properties": {]}'): "s.json: line 2 column 17: not JSON",
    ("s.json", '{"type": "object", "properties": {"QAs": {"type": "array"}}}'):
        "s.json: no object at properties.frames (the answer's shape is fixed",
    ("s.json", '[1, 2]'): 's.json: a JSON schema of an object ("type": "object") is expected',
}


@pytest.mark.parametrize("name,content", list(BAD_FILES))
def test_malformed_template_or_schema_is_one_line(tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    (tmp_path / "seeds.txt").write_text("a dog runs\n")
    flag = "--template" if name.endswith(".txt") else "--schema"
    args = generate.get_args(["--seeds", str(tmp_path / "seeds.txt"), "--out", str(tmp_path / "out"),
                              "--hf_model", str(tmp_path / "no-model"), flag, str(tmp_path / name)])
    with pytest.raises(SystemExit) as e:
        run_cli(generate.main, args, "textvid.generate")
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"textvid.generate: error: {tmp_path / name}".replace(str(tmp_path / name),
                                                                                str(tmp_path) + "/")), err
    assert BAD_FILES[(name, content)] in err, err
    assert not (tmp_path / "out").exists()          # refused before anything was written


def test_schema_the_decoder_cannot_follow_names_the_file(tmp_path, chat_dir, capsys):
    schema = tmp_path / "s.json"
    bad = json.loads(json.dumps(SMALL_SCHEMA))
    bad["properties"]["global_video_caption"] = {"type": "strin"}
    schema.write_text(json.dumps(bad))
    (tmp_path / "seeds.txt").write_text("a dog runs\n")
    args = generate.get_args(["--seeds", str(tmp_path / "seeds.txt"), "--out", str(tmp_path / "out"),
                              "--hf_model", str(chat_dir), "--schema", str(schema), "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit):
        run_cli(generate.main, args, "textvid.generate")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"textvid.generate: error: {schema}: llguidance cannot follow this schema: Invalid type: strin"


def test_bad_seeds_and_flags_are_one_line(tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"caption": "a dog runs"}\n{"caption": "  ", "domain": "x"}\n')
    writer = ["--out", str(tmp_path / "out"), "--base_url", "http://127.0.0.1:9/v1", "--model", "m"]
    for argv, want in [(["--seeds", str(seeds)], f"{seeds}:2: 'caption' must be a non-empty string"),
                       (["--seeds", str(tmp_path / "none.txt")], f"--seeds {tmp_path / 'none.txt'}: no such file")]:
        with pytest.raises(SystemExit) as e:
            run_cli(generate.main, generate.get_args(argv + writer), "textvid.generate")
        assert e.value.code == 1 and capsys.readouterr().err == f"textvid.generate: error: {want}\n"
    for argv, want in [(["--frames", "9-3"], "--frames 9-3: expected MIN-MAX with 1 <= MIN <= MAX"),
                       (["--shard", "2/2"], "--shard 2/2: expected I/N with 0 <= I < N"),
                       (["--qas", "many"], "argument --qas: expected MIN-MAX such as 5-15, got 'many'"),
                       (["--model", "m"], "give the writer: --hf_model DIR, or --base_url URL --model NAME")]:
        with pytest.raises(SystemExit) as e:
            generate.get_args(["--seeds", str(seeds), "--out", "o"] + (writer[2:] if argv[0] != "--model" else [])
                              + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.splitlines()[-1].startswith(f"python -m textvid.generate: error: {want}"), err


def answer_with(**change) -> str:
    a = json.loads(tideo_answer("dog"))
    qa = a["QAs"][0]
    for k, v in change.items():
        target = qa if k in qa else a
        target[k] = v
    return json.dumps(a)


REJECTIONS = [  # answer -> (reason, message) that checks.accept gives
    ("", ("not JSON", "the answer is empty")),
    ('{"frames": [', ("not JSON", "Expecting value at character 12")),
    ("[1]", ("shape", "the answer is a JSON list, not an object")),
    (answer_with(frames=[{"caption": "x", "objects": "dog"}]), ("shape", "frame 0 is not {'caption': text, ")),
    (answer_with(frames=[]), ("dataset check", "'frames' must be a non-empty list of frame dicts")),
    (answer_with(answer="E "), None),  # the dataset reads " E " as E: accepted
    (answer_with(answer="e"), ("dataset check", "QA 0: answer 'e' is not one of the option letters A, B, C, D, E")),
    (answer_with(options=["a", "b", "c", "d"], answer="A"), ("not 5 options", "QA 0 has 4 options")),
    (answer_with(options=["a", "b", " ", "d", "e"]), ("dataset check", "QA 0: option 2 is empty")),
    (answer_with(options=["a", "b", "Big  Dog", "d", "big dog"]),
     ("options not distinct", "QA 0: options 2 and 4 are the same")),
    (answer_with(question=" "), ("empty text", "QA 0: the question is empty")),
    (answer_with(answer_open_ended=None), ("empty text", "QA 0: no 'answer_open_ended'")),
    (answer_with(global_video_caption="\n"), ("dataset check", "no 'global_video_caption'")),
    (answer_with(frames=[{"caption": "a", "objects": []}]), ("objects out of range", "0 objects, expected 1 to 1")),
    (answer_with(frames=[{"caption": "a", "objects": ["b"]}] * 3),
     ("frames out of range", "3 frames, expected 1 to 2")),
]


@pytest.mark.parametrize("text,want", REJECTIONS)
def test_every_rejection_has_a_reason(text, want):
    from textvid.checks import Rejected, accept
    job = plan_jobs([Seed(1, "a dog runs", None)], 1, 0)[0]
    shape = Shape(frames=(1, 2), objects=(1, 1), qas=(1, 1))
    if want is None:
        t = accept(text, job, shape)
        parse_tideo(t, "x", 0, need_caption=True)
        return
    with pytest.raises(Rejected) as e:
        accept(text, job, shape)
    assert (e.value.reason, e.value.message[:len(want[1])]) == want


def test_a_torn_last_line_is_cut_before_the_shard_goes_on(tmp_path):
    from textvid.store import read_part
    part = tmp_path / "part-0-of-1.jsonl"
    whole = json.dumps({"idx": "a", "try": 1, "tokens": [3, 4], "reason": "not JSON", "message": "m"}) + "\n"
    part.write_text(whole + '{"idx": "b", "try": 1, "tid')
    assert list(read_part(part)) == ["a"] and part.read_text().endswith("tid")   # another shard's: read only
    states = read_part(part, cut=True)
    assert part.read_text() == whole and states["a"].tokens == (3, 4) and not states["a"].finished(2)
    part.write_text(whole + "not json\n")
    with pytest.raises(Exception, match=r"part-0-of-1.jsonl:2: not a line this program wrote"):
        read_part(part)
