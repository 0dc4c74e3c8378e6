"""The toy world of `python app.py --toy`: everything the demo needs, random and tiny, written in a few
seconds on a CPU (no download):

    build_toy(root) -> {"llama_model_path", "model", "clip_model", "resume", "memory_path", "examples"}

a self-trained SentencePiece tokenizer and a tiny Llama-2-style model in Meta's format, a TOPA
checkpoint with random (non-zero) adapter tensors so that the video changes the answers, a random text
memory, a tiny random CLIP in Hugging Face format, and example videos (H.264 mp4, yuv420p, which
browsers play: MPEG-4 Part 2 files do not play in Chromium). The answers are random text.
"""
import argparse
from fractions import Fraction
from pathlib import Path

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
    from llama.checkpoint import load_meta_checkpoint
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
