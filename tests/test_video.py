"""video/: the frame-sampling rules (docs/extraction.md) against hand-computed indices, decoding by decoder
output order on synthetic videos whose frame k shows k (several containers, codecs, fps values and odd
sizes), frame folders, unreadable inputs, OpenAI's preprocessing against an independent implementation,
and the CLIP encoder's projected embeddings on a tiny random CLIPModel."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from video import frames as fr
from video.clip import MEAN, STD, ClipEncoder, pixels, preprocess
from video.frames import FixedRate, Segments, Strided, VideoError
from toyworld.videos import read_code, save_random_clip, write_frame_folder, write_video

NTSC = Fraction(30000, 1001)


def codes(img):
    """A stand-in transform: the number a decoded frame shows (instead of CLIP pixels)."""
    return np.array(read_code(np.asarray(img.convert("RGB"))))


# ---- rules, by hand ----

def test_fixed_rate_rounds_half_up_on_exact_rates():
    # 1 fps from 29.97 (30000/1001): rows at 0, 29.97, 59.94, 89.91 -> 0, 30, 60, 90 (not truncated 29, 59, 89)
    assert FixedRate(Fraction(1)).indices(100, NTSC) == [0, 30, 60, 90]
    # the decimal 29.97 = 2997/100: same frames; 91 frames -> rows stop before 91
    assert FixedRate(Fraction(1)).indices(91, Fraction("29.97")) == [0, 30, 60, 90]
    assert FixedRate(Fraction(1)).indices(90, Fraction("29.97")) == [0, 30, 60]
    # 25 fps at 2 per second: 0, 12.5, 25, 37.5, 50, 62.5 -> ties go up (13, 38, 63; half-to-even gives 12, 62)
    assert FixedRate(Fraction(2)).indices(70, Fraction(25)) == [0, 13, 25, 38, 50, 63]
    assert FixedRate(Fraction(1)).indices(49, Fraction(24)) == [0, 24, 48]
    assert FixedRate(Fraction(1)).indices(60, Fraction(30)) == [0, 30]
    assert FixedRate(Fraction(3)).indices(7, Fraction(3)) == list(range(7))        # TVQA folders: every frame
    assert FixedRate(Fraction(3)).indices(5, Fraction(2)) == [0, 1, 1, 2, 3, 3, 4]  # upsampling repeats, by rule
    assert FixedRate(Fraction(1)).indices(1, Fraction(25)) == [0]
    with pytest.raises(VideoError, match="empty"):
        FixedRate(Fraction(1)).indices(0, Fraction(25))
    with pytest.raises(VideoError, match="no frame rate"):
        FixedRate(Fraction(1)).indices(10, None)


@pytest.mark.parametrize("fps,rate", [(NTSC, 1), (Fraction(25), 2), (Fraction(24), 1), (Fraction(2), 3),
                                      (Fraction(2997, 100), Fraction(1, 2))])
def test_fixed_rate_single_pass_membership_agrees_with_indices(fps, rate):
    rule = FixedRate(Fraction(rate))
    idx = set(rule.indices(400, fps))
    assert {i for i in range(400) if rule.wants(i, fps)} == idx


def test_mvbench_segments_by_hand():
    # video, 100 frames at 25 fps, start 1 s, end 3 s: a = 25, b = 75, seg = 5, idx = int(27.5 + 5i)
    assert Segments(10, 1.0, 3.0).indices(100, Fraction(25)) == [27, 32, 37, 42, 47, 52, 57, 62, 67, 72]
    # end past the video: b = min(round(end*fps), last) with last = n - 1 = 59 (the published n = 60 would
    # give 26 30 33 36 40 44 47 50 54 58): seg = 3.4, idx = int(26.7 + round(3.4 i))
    assert Segments(10, 1.0, 9.0).indices(60, Fraction(25)) == [26, 29, 33, 36, 40, 43, 46, 50, 53, 57]
    # whole video, frame folder of 30 files (first = 1, last = 30, 3 fps): a = 1, b = 30, seg = 2.9,
    # file numbers int(2.45 + round(2.9 i)) = 2 5 8 11 14 16 19 22 25 28 (i = 5: round(14.5) = 14, half to even)
    assert [i + 1 for i in Segments(10).indices(30, Fraction(3), first=1)] == [2, 5, 8, 11, 14, 16, 19, 22, 25, 28]
    # the same folder, start 2 s end 5 s: a = 6, b = 15, seg = 0.9: int(6.45 + round(0.9 i)); i = 5: round(4.5) = 4
    assert [i + 1 for i in Segments(10, 2, 5).indices(30, Fraction(3), first=1)] == [6, 7, 8, 9, 10, 10, 11, 12, 13, 14]
    # whole video file: a = 0, b = n - 1 = 99, seg = 9.9: int(4.95 + round(9.9 i))
    assert Segments(10).indices(100, Fraction(30)) == [4, 14, 24, 34, 44, 54, 63, 73, 83, 93]
    with pytest.raises(VideoError, match="starts after the video ends"):
        Segments(10, 5.0, 8.0).indices(100, Fraction(25))   # a = 125 > b = 99
    with pytest.raises(VideoError, match="too short"):
        Segments(8, min_frames=8).indices(7, Fraction(25))


def test_strided_by_hand():
    assert Strided(10).indices(95, None) == [0, 9, 18, 27, 36, 45, 54, 63, 72, 81]
    assert Strided(10).indices(10, None) == list(range(10))
    with pytest.raises(VideoError, match="too short: 9 frames, 10 needed"):
        Strided(10).indices(9, None)


# ---- decoding real files ----

@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "ntsc.mp4": (write_video(d / "ntsc.mp4", 95, NTSC, (64, 48)), 95, NTSC),      # H.264 with B-frames
        "odd.mkv": (write_video(d / "odd.mkv", 70, 25, (301, 177)), 70, Fraction(25)),  # FFV1, no frame count
        "vp9.webm": (write_video(d / "vp9.webm", 50, 24, (64, 48)), 50, Fraction(24)),  # no frame count
        "decimal.avi": (write_video(d / "decimal.avi", 65, Fraction(2997, 100), (64, 48)), 65, Fraction(2997, 100)),
        "odd.mp4": (write_video(d / "odd.mp4", 40, 30, (75, 53)), 40, Fraction(30)),
    }


@pytest.mark.parametrize("name", ["ntsc.mp4", "odd.mkv", "vp9.webm", "decimal.avi", "odd.mp4"])
def test_decoded_frames_are_the_rule_indices(clips, name):
    path, n, fps = clips[name]
    rules = [FixedRate(Fraction(1)), FixedRate(Fraction(2)), Segments(10), Segments(10, 0.4, 1.3), Strided(10)]
    out = fr.read_video(str(path), rules, codes)
    for rule, o in zip(rules, out):
        assert not isinstance(o, VideoError), (name, rule, o)
        idx, shown = o
        assert idx == rule.indices(n, fps), (name, rule)          # decoded count, not the container's
        assert shown.tolist() == idx, (name, rule)                 # frame k really is the k-th frame


def test_wrong_frame_count_guess_costs_a_second_pass_not_a_wrong_frame(clips, monkeypatch):
    path, n, fps = clips["odd.mkv"]
    for guess in (n - 7, n + 9, 0):
        monkeypatch.setattr(fr, "_count_packets", lambda p, g=guess: g)
        (idx, shown), = fr.read_video(str(path), [Segments(10)], codes)
        assert idx == Segments(10).indices(n, fps) and shown.tolist() == idx


def test_a_window_past_the_end_fails_alone(clips):
    path, n, fps = clips["ntsc.mp4"]   # 95 frames, ~3.2 s
    good, bad = fr.read_video(str(path), [Segments(10, 0, 1), Segments(10, 4, 6)], codes)
    assert good[1].tolist() == good[0]
    assert isinstance(bad, VideoError) and "starts after the video ends" in str(bad)


def test_frame_folders(tmp_path):
    folder = write_frame_folder(tmp_path / "s01e01_clip", 30, (61, 47))
    seg, rate, win = fr.read_frames(str(folder), [Segments(10), FixedRate(Fraction(3)), Segments(10, 2, 5)],
                                    codes, folder_fps=3)
    assert [i + 1 for i in seg[0]] == [2, 5, 8, 11, 14, 16, 19, 22, 25, 28]   # file numbers (first = 1)
    assert seg[1].tolist() == seg[0] and rate[0] == list(range(30)) and rate[1].tolist() == list(range(30))
    assert [i + 1 for i in win[0]] == [6, 7, 8, 9, 10, 10, 11, 12, 13, 14] and win[1].tolist() == win[0]
    (folder / "00007.jpg").unlink()
    with pytest.raises(VideoError, match="frame 7 is missing"):
        fr.read_frames(str(folder), [FixedRate(Fraction(3))], codes)
    (folder / "cover.jpg").write_bytes(b"x")
    with pytest.raises(VideoError, match="not named by a frame number"):
        fr.read_frames(str(folder), [FixedRate(Fraction(3))], codes)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="empty"):
        fr.read_frames(str(empty), [FixedRate(Fraction(3))], codes)
    broken = write_frame_folder(tmp_path / "broken", 3)
    (broken / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoError, match="unreadable frame 00002.jpg"):
        fr.read_frames(str(broken), [FixedRate(Fraction(3))], codes)


def header_only_mkv(src, dst):
    """A Matroska file cut inside its first cluster's header (ID, size, timecode): it opens, has a video
    stream, and decodes 0 frames."""
    data = src.read_bytes()
    dst.write_bytes(data[: data.index(bytes.fromhex("1F43B675")) + 12])
    return dst


def test_unreadable_inputs_name_the_reason(tmp_path, clips):
    rule = [FixedRate(Fraction(1))]
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(VideoError, match="unreadable"):
        fr.read_frames(str(tmp_path / "noise.mp4"), rule, codes)
    with pytest.raises(VideoError, match="missing"):
        fr.read_frames(str(tmp_path / "nothere.mp4"), rule, codes)
    empty = header_only_mkv(clips["odd.mkv"][0], tmp_path / "empty.mkv")
    assert fr.read_frames(str(empty), rule, codes)[0].args[0].startswith("empty")
    assert str(fr.read_frames(str(empty), [Strided(10)], codes)[0]).startswith("empty")
    half = clips["ntsc.mp4"][0].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(half[: len(half) // 2])   # moov atom at the end: cannot open
    with pytest.raises(VideoError, match="unreadable"):
        fr.read_frames(str(tmp_path / "cut.mp4"), rule, codes)


# ---- OpenAI's preprocessing ----

def openai_reference(img: Image.Image) -> np.ndarray:
    """An independent transcription of OpenAI's transform (torchvision Resize(224, bicubic) on PIL,
    CenterCrop(224), RGB, ToTensor, Normalize) -> float32 [3, 224, 224]."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 224, int(224 * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    crop_top = int(round((new_h - 224) / 2.0))
    crop_left = int(round((new_w - 224) / 2.0))
    img = img.crop((crop_left, crop_top, crop_left + 224, crop_top + 224)).convert("RGB")
    x = np.array(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]


def floor_offsets(img: Image.Image):
    """What an image processor that floors the crop offsets would cut (Hugging Face's)."""
    w, h = img.size
    if w <= h:
        nw, nh = 224, int(224 * h / w)
    else:
        nw, nh = int(224 * w / h), 224
    return (nh - 224) // 2, (nw - 224) // 2


@pytest.mark.parametrize("size", [(303, 177), (177, 303), (301, 177), (224, 224), (640, 360), (97, 1281)])
def test_preprocess_equals_openai_transform(size):
    rng = np.random.default_rng(size[0] * 7 + size[1])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = pixels(torch.from_numpy(preprocess(img))[None])[0].numpy()
    ref = openai_reference(img)
    assert ours.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    if size in ((303, 177), (177, 303)):  # round((383-224)/2) = 80, floor = 79: one pixel apart
        w, h = img.size
        nw, nh = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
        assert floor_offsets(img) != (int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0)))


def test_preprocess_converts_to_rgb_after_the_crop():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (99, 311), dtype=np.uint8), mode="L")
    np.testing.assert_allclose(pixels(torch.from_numpy(preprocess(img))[None])[0].numpy(), openai_reference(img),
                               atol=1e-6)


# ---- the CLIP encoder ----

@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return ClipEncoder(str(save_random_clip(tmp_path_factory.mktemp("clip") / "tiny")), "cpu", torch.float32)


def test_image_features_are_the_unnormalised_projection(encoder):
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    got = encoder.images(frames)
    m = encoder.model
    with torch.no_grad():
        x = pixels(frames)
        pooled = m.vision_model(pixel_values=x).pooler_output    # post-layernorm CLS token
        want = m.visual_projection(pooled)
    assert got.shape == (3, 768) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-2)


def test_text_features_are_unit_norm_projection_with_77_tokens(encoder):
    texts = ["a man rides a horse", "two dogs", "x " * 200]
    got = encoder.texts(texts)
    assert got.shape == (3, 768)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    m, tok = encoder.model, encoder.tokenizer
    with torch.no_grad():
        for i, t in enumerate(texts):
            ids = tok(t, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
            assert ids.shape[1] <= 77 and ids[0, -1].item() == tok.eos_token_id
            want = F.normalize(m.text_projection(m.text_model(input_ids=ids).pooler_output), dim=-1)[0]
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no connection"])
def test_an_unreachable_hub_name_fails_at_once(tmp_path, offline):
    """A hub name that is not in the (empty) Hugging Face cache while the hub cannot be reached: the one-line
    error at once, not after the hub client's retries (a "Retrying in Ns [Retry k/5]" line each, ~30 s)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as s:   # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http", "ALL_PROXY", "all_proxy"))}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HOME=str(tmp_path / "hf"),
               **({"HF_HUB_OFFLINE": "1"} if offline == "HF_HUB_OFFLINE" else
                  {"HF_ENDPOINT": f"http://127.0.0.1:{closed}"}))
    code = "from video.clip import ClipEncoder\nClipEncoder('openai/clip-vit-large-patch14')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "Retry" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("util.errors.CheckpointError: --clip_model openai/clip-vit-large-patch14: no such "
                           "folder, and the hub is unreachable (" + ("HF_HUB_OFFLINE is set" if offline ==
                                                                    "HF_HUB_OFFLINE" else "no connection to")), last
