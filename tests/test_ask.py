"""ask.py end to end on CPU: a tiny video written with PyAV, a tiny random CLIPModel (save_pretrained),
a tiny Llama-2 in Meta's format with the real tokenizer and a random TOPA checkpoint. Each request's
printed answer equals what the model gives on the frames its protocol picks, decoded here with PyAV
directly and encoded with CLIP, recomputing every token (no cache)."""
import argparse
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataloader.base import fit_frames
from llama.adapter import TOPAArgs, build_model
from llama.decoding import greedy_generate
from llama.memory import project_to_memory
from llama.memory import load_memory
from llama.weights import load_meta_checkpoint
from text import protocols as P
from text.prompts import normalize_question
from text.tokenizer import load_tokenizer
from toyworld.fixtures import fixtures_dir
from toyworld.tiny import make_tiny_llama
from toyworld.videos import save_random_clip, write_video
from util.errors import ConfigError, MissingFileError
from util.files import save_atomic
from video.clip import ClipEncoder, preprocess
from video.frames import Segments, Strided

REPO = Path(__file__).resolve().parents[1]
FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES
N_FRAMES = 37


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    g = torch.Generator().manual_seed(0)
    mdir = make_tiny_llama(root / "llama2", Path(FIX) / "llama2" / "tokenizer.model", dim=64, n_layers=2,
                           n_heads=4, seed=2, std=0.1)
    tok = load_tokenizer(root / "llama2" / "tokenizer.model")
    margs = TOPAArgs.from_params_json(mdir / "params.json", adapter_len=10, max_feats=10, vocab_size=tok.n_words)
    model = build_model(margs, load_meta_checkpoint(mdir))
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "gate" in n else 0.1))
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "scaler": None,
                 "args": argparse.Namespace()}, root / "topa.pth")
    torch.save(F.normalize(torch.randn(200, 768, generator=g), dim=-1).half(), root / "memory.pkl")
    video = write_video(root / "clip.mp4", N_FRAMES, Fraction(25), (80, 60), code=False)
    clip = save_random_clip(root / "tiny-clip")
    return {"root": root, "model": model.eval(), "tok": tok, "video": video, "clip": clip}


def argv(w, *request, memory=True):
    r = w["root"]
    return [str(w["video"]), *request, "--llama_model_path", str(r / "llama2"), "--model", "tiny", "--llama2",
            "--adapter_len", "10", "--resume", str(r / "topa.pth"), "--clip_model", str(w["clip"]),
            "--memory_path", str(r / "memory.pkl"), "--device", "cpu"] + ([] if memory else ["--no_memory"])


def ask(w, *request, memory=True):
    import ask as ask_script
    return ask_script.main(ask_script.get_args(argv(w, *request, memory=memory)))


def expected_inputs(w, rule, memory=True):
    """The video [10, 768] as ask.py must feed it: the rule's frames, decoded here with PyAV."""
    with av.open(str(w["video"])) as c:
        frames = [f.to_image() for f in c.decode(video=0)]
    idx = rule.indices(len(frames), Fraction(25))
    enc = ClipEncoder(str(w["clip"]), "cpu", torch.float32)
    v = fit_frames(enc.images(torch.from_numpy(np.stack([preprocess(frames[i]) for i in idx]))), 10)
    return project_to_memory(v, load_memory(w["root"] / "memory.pkl")) if memory else v


def generate(w, p1, p2, video, **kw):
    prompt = P.prompt_ids(w["tok"], p1, p2, 10)
    (ids,) = greedy_generate(w["model"], [prompt], video[None], eos_id=w["tok"].eos_id, use_cache=False, **kw)
    return prompt, ids


def test_multiple_choice_question(world):
    q, opts = "What is shown?", ["noise", "a cat", "a car"]
    got = ask(world, "--question", q, "--options", *opts)
    video = expected_inputs(world, Segments(10))
    p2 = P.MVBENCH.p2_text(question=q, choices=P.choices_text(opts))
    prompt = P.prompt_ids(world["tok"], P.MVBENCH.p1, p2, 10)
    tokens = torch.tensor([[0 if t == P.VIDEO else t for t in prompt]])
    with torch.no_grad():
        h = world["model"].hidden(tokens, torch.arange(len(prompt))[None], None, video[None],
                                  torch.tensor([prompt.index(P.VIDEO)]))
        logits = world["model"].logits(h[0, -1])
    k = int(logits[P.letter_ids(world["tok"], 3)].argmax())
    assert got.startswith(f"({'ABC'[k]}) {opts[k]}")
    _, ids = generate(world, P.MVBENCH.p1, p2, video, max_new_tokens=2, masked_ids=P.masked_ids(world["tok"]))
    free = P.generated_text(world["tok"], prompt, ids, P.MVBENCH.marker)[0]
    assert (got == f"({'ABC'[k]}) {opts[k]}") == (P.predicted_letter(free, 3) == "ABC"[k])
    if got != f"({'ABC'[k]}) {opts[k]}":
        assert repr(free) in got


def test_describe_and_open_question(world):
    got = ask(world, "--describe", memory=False)
    video = expected_inputs(world, Strided(10), memory=False)
    prompt, ids = generate(world, P.MSRVTT.p1, P.MSRVTT.p2, video, max_new_tokens=10,
                           masked_ids=P.masked_ids(world["tok"]))
    assert got == P.MSRVTT.cut(P.generated_text(world["tok"], prompt, ids, P.MSRVTT.marker)[0])
    got = ask(world, "--question", "where is it", "--max_new_tokens", "6")
    video = expected_inputs(world, Strided(10))
    p2 = f"\nQuestion: {normalize_question('where is it')}\nAnswer:"
    prompt, ids = generate(world, P.MSRVTT.p1, p2, video, max_new_tokens=6)
    want = P.generated_text(world["tok"], prompt, ids, "Answer:")[0].split("\n")[0].strip()
    assert got == want and p2.endswith("Where is it?\nAnswer:")


def test_cli_prints_the_answer_and_one_line_errors(world, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(REPO / "ask.py")] + argv(world, "--question", "What is it?", "--options",
                                                                     "red", "blue"),
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines() == [ask(world, "--question", "What is it?", "--options", "red", "blue")]
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    bad = argv(world, "--describe")
    bad[0] = str(tmp_path / "broken.mp4")
    p = subprocess.run([sys.executable, str(REPO / "ask.py")] + bad, env=env, capture_output=True, text=True,
                       timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "broken.mp4" in err and "unreadable" in err, err
    with pytest.raises(ConfigError, match="--question"):
        ask(world, "--describe", "--question", "why?")
    import ask as ask_script
    with pytest.raises(MissingFileError, match="nowhere.pkl.*--no_memory"):
        ask_script.main(ask_script.get_args(argv(world, "--describe") + ["--memory_path", "nowhere.pkl"]))
    short = write_video(tmp_path / "short.mp4", 4, 25, (64, 48))   # fewer frames than T: answered, as by every kind
    assert ask_script.main(ask_script.get_args([str(short)] + argv(world, "--describe")[1:]))
