"""Stand-ins for what a user brings, for the tests and the benchmark (not needed to extract features):
videos whose frame k shows the number k, frame folders, and random CLIP models in Hugging Face format.

    write_video(path, n, fps, size=(w, h))   codec by extension: .mp4 H.264 (B-frames), .mkv FFV1,
                                              .webm VP9, .avi MPEG-4; odd sizes allowed (4:4:4)
    write_frame_folder(folder, n, size)       00001.jpg .. {n:05d}.jpg
    read_code(rgb) -> k                       the number a decoded frame shows
    save_random_clip(folder, config=None)     a random CLIPModel + a byte-level CLIP tokenizer
"""
from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {".mp4": "libx264", ".mkv": "ffv1", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def code_image(k: int, size) -> np.ndarray:
    """uint8 [h, w, 3] grey image showing k < 256: left half level k // 16, right half k % 16."""
    if not 0 <= k < 256:
        raise ValueError(f"frame code {k} is outside 0..255")
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2] = 16 + 14 * (k // 16)
    img[:, w // 2:] = 16 + 14 * (k % 16)
    return img


def read_code(rgb: np.ndarray) -> int:
    """The k of `code_image` from a decoded (lossy) frame [h, w, 3]."""
    w = rgb.shape[1]
    left, right = rgb[:, : w // 4].mean(), rgb[:, 3 * w // 4:].mean()
    return int(round((left - 16) / 14)) * 16 + int(round((right - 16) / 14))


def write_video(path, n: int, fps=25, size=(64, 48), code=True):
    """n frames at `fps` (a Fraction for NTSC rates); frame k shows k (code=True) or noise."""
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = CODECS[path.suffix]
    w, h = size
    odd = w % 2 or h % 2
    pix = {"libx264": "yuv444p" if odd else "yuv420p", "ffv1": "yuv444p", "libvpx-vp9": "yuv420p",
           "mpeg4": "yuv420p"}[codec]
    rng = np.random.default_rng(n)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
        s.width, s.height, s.pix_fmt = w, h, pix
        for k in range(n):
            img = code_image(k, size) if code else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_frame_folder(folder, n: int, size=(64, 48), first: int = 1):
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(code_image(k, size)).save(folder / f"{k + first:05d}.jpg", quality=95)
    return folder


def byte_level_vocab() -> dict:
    """A CLIP BPE vocabulary without merges: every byte, with and without `</w>`, then the two specials
    (end of text has the largest id, as in OpenAI's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in bs] + [chr(256 + i) for i in range(256 - len(bs))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_clip_config(vocab_size: int, eos: int, projection_dim: int = 768):
    from transformers import CLIPConfig
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return CLIPConfig(text_config=dict(small, vocab_size=vocab_size, max_position_embeddings=77,
                                       eos_token_id=eos, bos_token_id=eos - 1, pad_token_id=eos),
                      vision_config=dict(small, image_size=224, patch_size=32), projection_dim=projection_dim)


def vit_l14_config(vocab_size: int, eos: int):
    """OpenAI ViT-L/14's shapes (random weights): the real per-frame cost."""
    from transformers import CLIPConfig
    return CLIPConfig(text_config=dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072,
                                       num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                       eos_token_id=eos, bos_token_id=eos - 1, pad_token_id=eos),
                      vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                         num_attention_heads=16, image_size=224, patch_size=14),
                      projection_dim=768)


def save_random_clip(folder, seed: int = 0, large: bool = False, projection_dim: int = 768) -> Path:
    """A random CLIPModel (tiny, or ViT-L/14-shaped with `large`) and its tokenizer, save_pretrained."""
    import json

    import torch
    import transformers
    from transformers import CLIPModel
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    vocab = byte_level_vocab()
    eos = vocab["<|endoftext|>"]
    config = vit_l14_config(len(vocab), eos) if large else tiny_clip_config(len(vocab), eos, projection_dim)
    torch.manual_seed(seed)
    folder = Path(folder)
    CLIPModel(config).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))  # the tokenizer files of OpenAI's hub folders
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder
