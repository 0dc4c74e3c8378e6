"""Frames/s of feature extraction, stage by stage and end to end, measured in one run.

Stages: PyAV decoding of a synthetic H.264 video (every frame decoded, as the sampling rules need),
OpenAI's preprocessing (PIL bicubic resize + centre crop), CLIP image encoding (a tiny random CLIP, and
with --large a random CLIP shaped like ViT-L/14: the real per-frame cost), and extract_features.py end
to end on a folder of videos at 1 frame/s (tiny CLIP, so decoding dominates).

  python bench/bench_extract.py [--large] [--device cuda --precision fp16 --batch_size 256]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import extract_features  # noqa: E402
from video.clip import ClipEncoder, preprocess  # noqa: E402
from util.dist import DTYPES as PRECISIONS  # noqa: E402
from video.frames import FixedRate, read_video  # noqa: E402
from toyworld.videos import save_random_clip, vit_l14_config  # noqa: E402


def write_moving_video(path, n, fps, size):
    """H.264 yuv420p, a drifting gradient with a moving noise patch (compresses like real footage,
    unlike flat colour or pure noise)."""
    import av
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            img = np.stack([(xx + 3 * k) % 256, (yy + 2 * k) % 256, (xx + yy + k) % 256], -1).astype(np.uint8)
            x0 = (5 * k) % (w - w // 4)
            img[h // 3:h // 3 + h // 4, x0:x0 + w // 4] = patch
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None, help="default fp16 on GPU, fp32 on CPU")
    p.add_argument("--batch_size", type=int, default=None, help="frames per CLIP pass (default 64 CPU, 256 GPU)")
    p.add_argument("--large", action="store_true", help="also time a random ViT-L/14-shaped CLIP")
    p.add_argument("--large_frames", type=int, default=None, help="frames for the ViT-L/14 timing")
    p.add_argument("--frames", type=int, default=300, help="frames of the synthetic video")
    p.add_argument("--size", default="640x360", help="frame size WxH")
    p.add_argument("--videos", type=int, default=24, help="videos for the end-to-end run")
    p.add_argument("--workers", default="0,2", help="DataLoader workers to try end to end")
    a = p.parse_args()
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    prec = a.precision or ("fp16" if gpu else "fp32")
    dtype = PRECISIONS[prec]
    bs = a.batch_size or (256 if gpu else 64)
    w, h = map(int, a.size.split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    video = tmp / "clip.mp4"
    write_moving_video(video, a.frames, 30, (w, h))

    import av

    def decode_all():
        with av.open(str(video)) as c:
            c.streams.video[0].thread_type = "AUTO"
            return sum(1 for _ in c.decode(video=0))

    t, n = timed(decode_all, 3)
    rows.append(("decode, every frame (PyAV)", f"{w}x{h} H.264, {n} frames", n / t))
    t, out = timed(lambda: read_video(str(video), [FixedRate(1)], preprocess), 3)
    rows.append(("decode + keep 1 fps + preprocess", f"{len(out[0][0])} of {n} frames kept", n / t))
    with av.open(str(video)) as c:
        imgs = [f.to_image() for _, f in zip(range(32), c.decode(video=0))]
    t, _ = timed(lambda: [preprocess(im) for im in imgs], 3)
    rows.append(("preprocess (PIL bicubic + crop)", f"{w}x{h} -> 224x224", len(imgs) / t))

    frames = torch.from_numpy(np.stack([preprocess(imgs[i % len(imgs)]) for i in range(bs)]))
    tiny = ClipEncoder(str(save_random_clip(tmp / "tiny")), device, dtype)
    tiny.images(frames[:4])
    sync(device)

    def enc(e, x):
        e.images(x)
        sync(device)

    t, _ = timed(lambda: enc(tiny, frames), 3)
    rows.append(("encode, tiny random CLIP", f"batch {bs}, {prec}, {device}", bs / t))
    if a.large:
        from transformers import CLIPModel
        from toyworld.videos import byte_level_vocab
        vocab = byte_level_vocab()
        torch.manual_seed(0)
        big = ClipEncoder(str(tmp / "tiny"), device, dtype,
                          model=CLIPModel(vit_l14_config(len(vocab), vocab["<|endoftext|>"])))
        nb = a.large_frames or (bs if gpu else 8)
        big.images(frames[:2])
        sync(device)
        t, _ = timed(lambda: enc(big, frames[:nb]), 2)
        rows.append(("encode, ViT-L/14-shaped CLIP", f"batch {nb}, {prec}, {device}", nb / t))
        del big

    vids = tmp / "videos"
    vids.mkdir()
    for i in range(a.videos):
        os.link(video, vids / f"v{i}.mp4")
    for nw in map(int, a.workers.split(",")):
        argv = ["--dataset", "folder", "--video_dir", str(vids), "--fps", "1", "--output", str(tmp / f"out{nw}.pth"),
                "--clip_model", str(tmp / "tiny"), "--device", a.device, "--precision", prec, "--batch_size", str(bs),
                "--num_workers", str(nw), "--quiet", "--overwrite"]
        t, status = timed(lambda: extract_features.main(argv))
        assert status == 0
        kept = sum(v.shape[0] for v in torch.load(tmp / f"out{nw}.pth").values())
        rows.append((f"end to end, {nw} workers, tiny CLIP", f"{a.videos} videos, {a.videos * n} decoded, "
                     f"{kept} encoded ({a.videos / t:.2f} videos/s)", a.videos * n / t))

    print(f"\nextraction frames/s on {device}"
          f" ({torch.cuda.get_device_name(device) if gpu else f'{os.cpu_count()} CPU cores'}):")
    print(f"{'stage':<40} {'setting':<58} {'frames/s':>9}")
    for stage, setting, fps in rows:
        print(f"{stage:<40} {setting:<58} {fps:>9.1f}")
    print("end to end counts decoded source frames per second; at 1 frame/s one in 30 is encoded.")


if __name__ == "__main__":
    main()
