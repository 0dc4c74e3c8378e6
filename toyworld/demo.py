"""The toy world of `python app.py --toy` and `python -m toyworld.demo --out DIR`: everything the demo and
ask.py need, random and tiny, written in a few seconds on a CPU (no download):

    build_toy(root) -> {"llama_model_path", "model", "clip_model", "resume", "memory_path", "examples"}
    toy_flags(world) -> {flag: value}     the model flags of ask.py / app.py that load it
    commands(world) -> [command, ...]     ask.py and app.py command lines on it (what the CLI prints)

a self-trained SentencePiece tokenizer and a tiny Llama-2-style model in Meta's format, a TOPA
checkpoint with random (non-zero) adapter tensors so that the video changes the answers, a random text
memory, a tiny random CLIP in Hugging Face format, and example videos (H.264 mp4, yuv420p, which
browsers play: MPEG-4 Part 2 files do not play in Chromium). The answers are random text.
"""
import argparse
import json
import shlex
import sys
from fractions import Fraction
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

TOY_SETTINGS = {"model": "tiny", "adapter_len": 10, "adapter_layer": None, "max_feats": 10}
EXAMPLES = {  # name -> (background RGB, object RGB, object shape)
    "red_ball.mp4": ((30, 60, 110), (230, 50, 40), "disc"),
    "green_square.mp4": ((240, 230, 200), (40, 160, 60), "square"),
    "yellow_stripes.mp4": ((20, 20, 30), (250, 210, 40), "stripes"),
}


def example_frames(background, color, shape: str, n: int = 48, size=(192, 144)) -> np.ndarray:
    """uint8 [n, h, w, 3]: an object moving left to right across a gradient."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.array(background, np.float32) * (0.6 + 0.4 * yy[..., None] / h)
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        cx, cy = 20 + (w - 40) * k / max(n - 1, 1), h / 2 + 25 * np.sin(k / 5)
        if shape == "disc":
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < 18 ** 2
        elif shape == "square":
            m = (abs(xx - cx) < 18) & (abs(yy - cy) < 18)
        else:
            m = ((xx + 3 * k) // 12) % 2 == 0
        img = base.copy()
        img[m] = color
        out[k] = img.clip(0, 255).astype(np.uint8)
    return out


def write_mp4(path, frames: np.ndarray, fps: int = 12) -> Path:
    import av
    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def build_toy(root, seed: int = 0) -> dict:
    from llama.adapter import TOPAArgs, build_model
    from llama.weights import load_meta_checkpoint
    from text.tokenizer import load_tokenizer
    from util.files import save_atomic

    from .tiny import make_tiny_llama, train_sentencepiece
    from .videos import save_random_clip
    root = Path(root)
    words = ["a red ball rolls across the blue sky", "a green square moves on a bright wall",
             "yellow stripes slide over a dark night", "It is a video of a person cooking in a kitchen.",
             "The correct choice is (A) (B) (C) (D) (E)", "Can you describe this video? how How"]
    tok_path = train_sentencepiece(root / "tokenizer.model", texts=words, vocab_size=600)
    mdir = make_tiny_llama(root / "llama2", tok_path, dim=64, n_layers=2, n_heads=4, seed=seed, std=0.1)
    tok = load_tokenizer(root / "llama2" / "tokenizer.model")
    margs = TOPAArgs.from_params_json(mdir / "params.json", adapter_len=TOY_SETTINGS["adapter_len"],
                                      max_feats=TOY_SETTINGS["max_feats"], vocab_size=tok.n_words)
    model = build_model(margs, load_meta_checkpoint(mdir))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "gate" in n else 0.1))
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "scaler": None,
                 "args": argparse.Namespace(llama2=True, llama3=False, **TOY_SETTINGS)}, root / "topa_toy.pth")
    torch.save(F.normalize(torch.randn(300, 768, generator=g), dim=-1).half(), root / "memory.pkl")
    clip = save_random_clip(root / "tiny-clip", seed=seed)
    examples = [str(write_mp4(root / name, example_frames(*spec))) for name, spec in EXAMPLES.items()]
    return {"llama_model_path": str(root / "llama2"), "model": "tiny", "clip_model": str(clip),
            "resume": str(root / "topa_toy.pth"), "memory_path": str(root / "memory.pkl"), "examples": examples}


QUESTION = ("What moves across the picture?", ["a red ball", "a green square", "yellow stripes"])
WORLD_FILE = "toy_world.json"   # what build_toy returned; marks a folder the CLI may write again


def toy_flags(world: dict) -> dict:
    """The model flags (ask.py / app.py names, argparse dests) that load the toy world."""
    return {"llama_model_path": world["llama_model_path"], "model": world["model"], "llama3": False,
            "clip_model": world["clip_model"], "resume": world["resume"], "memory_path": world["memory_path"],
            "adapter_len": TOY_SETTINGS["adapter_len"], "max_feats": TOY_SETTINGS["max_feats"]}


def _argv(flags: dict) -> List[str]:
    out = []
    for k, v in flags.items():
        if v is True:
            out.append(f"--{k}")
        elif v is not False and v is not None:
            out += [f"--{k}", str(v)]
    return out


def commands(world: dict) -> List[List[str]]:
    """Command lines on the toy world: ask.py (multiple choice, description, open question), then app.py."""
    model = _argv(toy_flags(world))
    video = world["examples"][0]
    question, options = QUESTION
    return [["python", "ask.py", video, "--question", question, "--options", *options, *model],
            ["python", "ask.py", video, "--describe", *model],
            ["python", "ask.py", video, "--question", "Where is it?", *model],
            ["python", "app.py", "--examples", *world["examples"], *model]]


def main(argv=None) -> int:
    from util.settings import make_parser
    p = make_parser("Write the toy world (a tiny random Llama, CLIP, TOPA checkpoint, text memory and example videos; "
                    "about 5 s on a CPU, no download) and print the ask.py and app.py commands that use it.\n\n"
                    "  python -m toyworld.demo --out toy\n"
                    "  python ask.py toy/red_ball.mp4 --describe ...      # as printed", prog="python -m toyworld.demo")
    p.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier toy world)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()) and not (out / WORLD_FILE).exists():
        print(f"toyworld.demo: error: --out {out}: not empty and not a toy world; choose a new folder",
              file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    world = build_toy(out, seed=a.seed)
    (out / WORLD_FILE).write_text(json.dumps(world, indent=1))
    print(f"The toy world is in {out} (random weights: the answers are random text). Try:")
    for cmd in commands(world):
        print("  " + shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
