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
from textvid.prompt import Prompt, Shape
from textvid.seeds import plan_jobs, read_seeds
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
            EVAL_ARGS="--model tiny --adapter_len 4 --adapter_layer 2 --device cpu --precision fp32 --num_workers 0 --batch_size 20")
    train_args = ["--model", "tiny", "--adapter_len", "4", "--adapter_layer", "2", "--device", "cpu", "--precision", "fp32",
                  "--num_workers", "0", "--no_tensorboard", "--max_seq_len", "64", "--lr", "1e-2"]
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
