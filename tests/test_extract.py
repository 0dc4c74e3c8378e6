"""extract_features.py end to end on synthetic videos and a tiny random CLIPModel (save_pretrained here):
the layouts the readers accept (and eval.py runs on), the frames each benchmark's protocol picks
(features compared with the encoding of hand-computed frames), failures listed, resume after an
interrupted run, --skip_bad, 2 torchrun processes == 1, TextVid features and memory.pkl."""
import csv
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import extract_features
import video.extract
from dataloader.base import DictFeatures, NpyDirFeatures
from llama.memory import load_memory
from toyworld.videos import save_random_clip, write_frame_folder, write_video
from util.files import load_pickled_tensor, safe_load
from video.clip import ClipEncoder, preprocess
from video.frames import FixedRate, Segments

REPO = Path(__file__).resolve().parents[1]
NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return ClipEncoder(str(clip_dir), "cpu", torch.float32)


def extract(clip_dir, *argv, workers=0) -> int:
    """extract_features.py in this process -> its exit status."""
    try:
        return extract_features.main(["--clip_model", str(clip_dir), "--device", "cpu", "--num_workers", str(workers),
                                      "--batch_size", "16", "--quiet", *map(str, argv)])
    except SystemExit as e:   # a bad command: one line on stderr, status 1
        return e.code


def all_frames(path):
    """Every frame of a video, decoded independently of video/ (PIL images in decoder output order)."""
    with av.open(str(path)) as c:
        return [f.to_image() for f in c.decode(video=0)]


def expected(encoder, images, idx):
    """What the file must hold for frames `idx`: fp16 CLIP image features of OpenAI-preprocessed frames."""
    px = torch.from_numpy(np.stack([preprocess(images[i]) for i in idx]))
    return encoder.images(px).half()


def assert_feats(got, want):
    assert got.dtype == torch.float16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def nextqa_csv(path, videos):
    write_csv(path, ["video", "frame_count", "width", "height", "question", "answer", "qid", "type"]
              + [f"a{i}" for i in range(5)],
              [[v, 100, 64, 48, f"what happens {i}", 0, i, "CW", "a", "b", "c", "d", "e"] for i, v in enumerate(videos)])


# ---- NExT-QA + EgoSchema layouts, then eval.py on them ----

def test_nextqa_and_egoschema_features_feed_eval(tmp_path, clip_dir, encoder, capsys):
    from toyworld.synthetic import build
    w = build(tmp_path / "w", seed=0, n_textvid=4, n_nextqa=6, n_nextqa_train=0, n_egos=2, dim=64)
    data = tmp_path / "w" / "data"
    with open(data / "nextqa" / "val.csv") as f:
        vids = sorted({r["video"] for r in csv.DictReader(f)})
    uids = [p.stem for p in sorted((data / "egos" / "features").glob("*.npy"))]
    shapes = [(95, NTSC, ".mp4"), (70, Fraction(25), ".mkv")]
    made = {}
    for i, v in enumerate(vids):   # NExT-QA's videos sit in sub-folders
        n, fps, ext = shapes[i % 2]
        made[v] = (write_video(tmp_path / "videos" / f"{1000 + i}" / f"{v}{ext}", n, fps, (64, 48)), n, fps)
    for u in uids:
        write_video(tmp_path / "ego" / f"{u}.mp4", 130, 30, (48, 64))

    common = ["--data_root", data, "--batch_size", "16"]
    # the toy world's features were not written by this tool: refused without --overwrite
    assert extract(clip_dir, "--dataset", "nextqa", "--video_dir", tmp_path / "videos", *common) == 1
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert extract(clip_dir, "--dataset", "nextqa", "--video_dir", tmp_path / "videos", "--overwrite", *common,
                   workers=2) == 0
    assert extract(clip_dir, "--dataset", "egos", "--video_dir", tmp_path / "ego", "--overwrite", *common) == 0

    feats = DictFeatures(data / "nextqa" / "clipvitl14.pth")
    assert sorted(feats.feats) == vids
    for v, (path, n, fps) in made.items():
        idx = FixedRate(Fraction(1)).indices(n, fps)     # 95 @ 29.97 -> 0 30 60 90; 70 @ 25 -> 0 25 50
        assert feats.n_rows(v) == len(idx)
        assert_feats(feats(v), expected(encoder, all_frames(path), idx))
    npy = NpyDirFeatures(data / "egos" / "features")
    for u in uids:
        assert npy.n_rows(u) == 5 and np.load(npy.path(u)).dtype == np.float16   # 130 frames @ 30: 0 30 .. 120
    assert oct(os.stat(data / "nextqa" / "clipvitl14.pth").st_mode & 0o044) == oct(0o044 & ~_umask())

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for ds, n_q in (("nextqa", 6), ("egos", 2)):
        p = subprocess.run([sys.executable, str(REPO / "eval.py"), "--llama_model_path", str(w["llama_model_path"]),
                            "--model", "tiny", "--llama2", "--data_root", str(data), "--dataset", ds, "--max_feats", "10",
                            "--adapter_len", "10", "--device", "cpu", "--precision", "fp32", "--num_workers", "0",
                            "--batch_size", "4", "--memory", "--output_dir", str(tmp_path / "results" / ds)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        preds = [json.loads(line) for line in open(tmp_path / "results" / ds / f"predictions_{ds}_val.jsonl")]
        assert len(preds) == n_q


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ---- STAR (1 fps) and TVQA (frame folders, 3 fps) ----

def test_star_and_tvqa_frame_folders(tmp_path, clip_dir, encoder, fixtures_dir):
    data = tmp_path / "data"
    (data / "star").mkdir(parents=True)
    star = [{"question_id": f"Interaction_T1_{i}", "question": "What did the person do?", "video_id": v,
             "start": 0.5, "end": 2.0, "answer": "a", "choices": [{"choice_id": j, "choice": c} for j, c in enumerate("abcd")]}
            for i, v in enumerate(["6H78U", "6H78U", "AX1Z0"])]
    (data / "star" / "STAR_val.json").write_text(json.dumps(star))
    write_video(tmp_path / "Charades" / "6H78U.mp4", 80, 24, (64, 48))
    write_video(tmp_path / "Charades" / "AX1Z0.webm", 31, 30, (64, 48))
    assert extract(clip_dir, "--dataset", "star", "--data_root", data, "--video_dir", tmp_path / "Charades") == 0
    feats = DictFeatures(data / "star" / "clipvitl14.pth")
    assert_feats(feats("6H78U"), expected(encoder, all_frames(tmp_path / "Charades" / "6H78U.mp4"), [0, 24, 48, 72]))
    assert_feats(feats("AX1Z0"), expected(encoder, all_frames(tmp_path / "Charades" / "AX1Z0.webm"), [0, 30]))

    (data / "tvqa").mkdir()
    lines = open(fixtures_dir / "tvqa" / "tvqa_test_public.jsonl").readlines()[:3]
    (data / "tvqa" / "tvqa_test_public.jsonl").write_text("".join(lines))
    names = [json.loads(line)["vid_name"] for line in lines]
    folders = {}
    for k, name in enumerate(names):   # <video_dir>/<show>_frames/<vid_name>/00001.jpg ...
        show = name.split("_")[0] if not name.startswith("s0") else "bbt"
        folders[name] = write_frame_folder(tmp_path / "frames" / f"{show}_frames" / name, 7 + k, (61, 47))
    assert extract(clip_dir, "--dataset", "tvqa", "--data_root", data, "--video_dir", tmp_path / "frames") == 0
    feats = DictFeatures(data / "tvqa" / "clipvitl14.pth")
    for k, name in enumerate(names):
        files = sorted(folders[name].glob("*.jpg"))
        assert [f.name for f in files][:2] == ["00001.jpg", "00002.jpg"]
        assert_feats(feats(name), expected(encoder, [Image.open(f) for f in files], range(7 + k)))  # every frame


# ---- MVBench ----

def test_mvbench_windows_and_frame_folders(tmp_path, clip_dir, encoder):
    root = tmp_path / "MVBench"
    write_video(root / "video" / "star" / "Charades_v1_480" / "A1.mp4", 100, 25, (64, 48))
    write_video(root / "video" / "perception" / "videos" / "B.webm", 47, 24, (64, 48))
    write_frame_folder(root / "video" / "tvqa" / "frames_fps3_hq" / "s01e02_seg02_clip_00", 30, (61, 47))
    items = {
        "action_sequence": [{"video": "A1.mp4", "start": 1.0, "end": 3.0}, {"video": "A1.mp4", "start": 0, "end": 1.5},
                            {"video": "A2.mp4", "start": 0, "end": 1}, {"video": "A1.mp4", "start": 9, "end": 12},
                            {"video": "A1.mp4"}],
        "object_shuffle": [{"video": "B.webm", "start": 30, "end": 40}],   # a task without bounds ignores them
        "episodic_reasoning": [{"video": "s01e02_seg02_clip_00", "start": 2, "end": 5}],
    }
    (root / "json").mkdir()
    for stem, its in items.items():
        (root / "json" / f"{stem}.json").write_text(json.dumps(
            [dict(it, question="q?", candidates=["x", "y"], answer="x") for it in its]))
    out = tmp_path / "data"
    argv = ["--dataset", "mvbench", "--mvbench_root", root, "--data_root", out,
            "--tasks", "action_sequence,object_shuffle,Episodic Reasoning"]
    assert extract(clip_dir, *argv) == 1
    fails = [json.loads(line) for line in open(out / "mvbench" / "failures_mvbench.jsonl")]
    assert [(f["key"], f["reason"].split(":")[0]) for f in fails] == [
        ("action_sequence/2", "missing"), ("action_sequence/3", "window 9.0..12.0 s starts after the video ends (100 frames at 25 fps)"),
        ("action_sequence/4", "annotation " + str(root / "json" / "action_sequence.json") + "[4]")]
    assert not (out / "mvbench" / "clipvitl14.pth").exists()
    assert extract(clip_dir, *argv, "--skip_bad") == 0
    feats = DictFeatures(out / "mvbench" / "clipvitl14.pth")
    assert sorted(feats.feats) == ["action_sequence/0", "action_sequence/1", "episodic_reasoning/0", "object_shuffle/0"]
    a1 = all_frames(root / "video" / "star" / "Charades_v1_480" / "A1.mp4")
    # start 1 end 3 at 25 fps: a = 25, b = 75, seg = 5 -> int(27.5 + 5i)
    assert_feats(feats("action_sequence/0"), expected(encoder, a1, [27, 32, 37, 42, 47, 52, 57, 62, 67, 72]))
    # start 0 end 1.5: a = 0, b = round(37.5) = 38, seg = 3.8 -> int(1.9 + round(3.8 i))
    assert_feats(feats("action_sequence/1"), expected(encoder, a1, [1, 5, 9, 12, 16, 20, 24, 28, 31, 35]))
    # whole video, 47 frames (webm: no frame count in the container): b = 46, seg = 4.6 -> int(2.3 + round(4.6 i))
    b = all_frames(root / "video" / "perception" / "videos" / "B.webm")
    assert_feats(feats("object_shuffle/0"), expected(encoder, b, [2, 7, 11, 16, 20, 25, 30, 34, 39, 43]))
    # frame folder, 3 fps, files 1..30, start 2 end 5: a = 6, b = 15 -> files 6 7 8 9 10 10 11 12 13 14
    folder = root / "video" / "tvqa" / "frames_fps3_hq" / "s01e02_seg02_clip_00"
    imgs = {k: Image.open(folder / f"{k:05d}.jpg") for k in range(1, 31)}
    assert_feats(feats("episodic_reasoning/0"), expected(encoder, imgs, [6, 7, 8, 9, 10, 10, 11, 12, 13, 14]))


# ---- captioning sets and a folder of videos ----

def test_msrvtt_vatex_and_folder(tmp_path, clip_dir, encoder):
    data = tmp_path / "data"
    (data / "msrvtt").mkdir(parents=True)
    (data / "msrvtt" / "test_videodatainfo.json").write_text(json.dumps(
        {"videos": [{"video_id": f"video70{i}"} for i in (10, 11, 12)],
         "sentences": [{"video_id": "video7010", "caption": "a cat"}]}))
    write_video(tmp_path / "TestVideo" / "video7010.mp4", 35, 30, (64, 48))
    write_video(tmp_path / "TestVideo" / "video7011.mp4", 9, 30, (64, 48))       # 9 < 10 frames
    assert extract(clip_dir, "--dataset", "msrvtt", "--data_root", data, "--video_dir", tmp_path / "TestVideo") == 1
    fails = {f["key"]: f["reason"] for f in map(json.loads, open(data / "msrvtt" / "failures_msrvtt.jsonl"))}
    assert fails["video7011"] == "too short: 9 frames, 10 needed" and fails["video7012"].startswith("missing")
    assert extract(clip_dir, "--dataset", "msrvtt", "--data_root", data, "--video_dir", tmp_path / "TestVideo",
                   "--skip_bad") == 0
    feats = DictFeatures(data / "msrvtt" / "clipvitl14.pth")
    assert list(feats.feats) == ["video7010"]
    assert_feats(feats("video7010"), expected(encoder, all_frames(tmp_path / "TestVideo" / "video7010.mp4"),
                                              [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]))   # i * (35 // 10)

    ann = tmp_path / "vatex_validation_v1.0.json"
    ann.write_text(json.dumps([{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["a dog runs"]}]))
    write_video(tmp_path / "val_all" / "Ptf_2VRj-V0_000122_000132.mp4", 250, 25, (64, 48))
    assert extract(clip_dir, "--dataset", "vatex", "--data_root", data, "--video_dir", tmp_path / "val_all",
                   "--annotations", ann) == 0
    feats = DictFeatures(data / "vatex" / "clipvitl14.pth")
    assert_feats(feats("Ptf_2VRj-V0_000122_000132"),
                 expected(encoder, all_frames(tmp_path / "val_all" / "Ptf_2VRj-V0_000122_000132.mp4"), range(0, 250, 25)))

    mine = tmp_path / "mine"
    write_video(mine / "a.mp4", 95, NTSC, (64, 48))
    write_video(mine / "trip" / "b.avi", 65, Fraction(2997, 100), (64, 48))
    write_frame_folder(mine / "c", 12, (64, 48))
    assert extract(clip_dir, "--dataset", "folder", "--video_dir", mine, "--num_frames", 8,
                   "--output", tmp_path / "mine8.pth") == 0
    feats = safe_load(tmp_path / "mine8.pth")
    assert list(feats) == ["a", "b", "c"] and all(v.shape == (8, 768) for v in feats.values())
    assert_feats(feats["a"], expected(encoder, all_frames(mine / "a.mp4"), Segments(8).indices(95, NTSC)))
    assert extract(clip_dir, "--dataset", "folder", "--video_dir", mine, "--fps", 2, "--output", tmp_path / "mine2") == 0
    assert sorted(p.name for p in (tmp_path / "mine2").glob("*.npy")) == ["a.npy", "b.npy", "c.npy"]
    b = np.load(tmp_path / "mine2" / "b.npy")       # 65 frames @ 29.97, 2/s: 0, 14.985, 29.97, ... -> half up
    assert_feats(torch.from_numpy(b), expected(encoder, all_frames(mine / "trip" / "b.avi"),
                                               [0, 15, 30, 45, 60]))
    assert np.load(tmp_path / "mine2" / "c.npy").shape == (8, 768)   # 12 frames @ 3 fps (folder), 2/s: 0 2 3 5 6 8 9 11


# ---- failures, resume, --skip_bad ----

def test_failures_resume_and_skip_bad(tmp_path, clip_dir, monkeypatch, capsys):
    data, vids = tmp_path / "data", tmp_path / "videos"
    names = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"]
    nextqa_csv(data / "nextqa" / "val.csv", names)
    for v in ("v1", "v2", "v3", "v4"):
        write_video(vids / f"{v}.mp4", 40, 25, (64, 48))
    (vids / "v6.mp4").write_bytes(b"\x00" * 3000)                                   # unreadable
    mkv = write_video(tmp_path / "src.mkv", 30, 25, (64, 48)).read_bytes()
    (vids / "v7.mkv").write_bytes(mkv[: mkv.index(bytes.fromhex("1F43B675")) + 12])  # opens, no frames
    decoded = []
    real = video.extract.read_frames
    monkeypatch.setattr(video.extract, "read_frames", lambda p, *a, **k: decoded.append(Path(p).stem) or real(p, *a, **k))
    argv = ["--dataset", "nextqa", "--data_root", data, "--video_dir", vids]
    out, parts = data / "nextqa" / "clipvitl14.pth", data / "nextqa" / "clipvitl14.pth.parts"

    # an interrupted run: 2 videos, saved as they finish; no final file
    assert extract(clip_dir, *argv, "--max_videos", 2, "--save_every", 1) == 0
    assert decoded == ["v1", "v2"] and not out.exists() and len(list(parts.glob("part-*.pth"))) == 2
    # resumed: the 2 done are skipped; v5 (missing), v6 (unreadable), v7 (empty) listed; exit 1, no final file
    decoded.clear()
    capsys.readouterr()
    assert extract(clip_dir, *argv) == 1
    assert "2 keys already done" in capsys.readouterr().out
    assert decoded == ["v3", "v4", "v6", "v7"]
    fails = [json.loads(line) for line in open(data / "nextqa" / "failures_nextqa.jsonl")]
    assert [(f["key"], f["reason"].split(":")[0]) for f in fails] == [("v5", "missing"), ("v6", "unreadable"),
                                                                      ("v7", "empty")]
    assert fails[1]["path"] == str(vids / "v6.mp4") and fails[0]["path"] is None
    assert not out.exists() and parts.is_dir()
    # v5 arrives; --skip_bad: only the 3 failed are tried again, the file is written without v6, v7
    write_video(vids / "sub" / "v5.mp4", 40, 25, (64, 48))
    decoded.clear()
    assert extract(clip_dir, *argv, "--skip_bad") == 0
    assert decoded == ["v5", "v6", "v7"]
    feats = DictFeatures(out)
    assert list(feats.feats) == ["v1", "v2", "v3", "v4", "v5"] and all(feats.n_rows(v) == 2 for v in feats.feats)
    assert [f["key"] for f in map(json.loads, open(data / "nextqa" / "failures_nextqa.jsonl"))] == ["v6", "v7"]
    assert not parts.exists()
    assert json.loads(out.with_name(out.name + ".extract.json").read_text())["n_failed"] == 2
    # other settings are never mixed in
    capsys.readouterr()
    assert extract(clip_dir, *argv, "--fps", 2) == 1
    assert "--overwrite" in capsys.readouterr().err
    # all good now: the failures list goes away
    write_video(vids / "v6.mp4", 40, 25, (64, 48))
    (vids / "v7.mkv").unlink()
    write_video(vids / "v7.mkv", 40, 25, (64, 48))
    decoded.clear()
    assert extract(clip_dir, *argv) == 0
    assert decoded == ["v6", "v7"] and len(DictFeatures(out).feats) == 7
    assert not (data / "nextqa" / "failures_nextqa.jsonl").exists()
    # and once more: nothing to do, nothing left behind
    decoded.clear()
    capsys.readouterr()
    assert extract(clip_dir, *argv) == 0
    assert decoded == [] and "nothing to do" in capsys.readouterr().out and not parts.exists()


def test_ctrl_c_keeps_what_was_finished(tmp_path, clip_dir, monkeypatch):
    data, vids = tmp_path / "data", tmp_path / "videos"
    nextqa_csv(data / "nextqa" / "val.csv", ["a", "b", "c", "d"])
    for v in "abcd":
        write_video(vids / f"{v}.mp4", 30, 25, (64, 48))
    real, decoded = video.extract.read_frames, []

    def stop_at_c(p, *a, **k):
        if Path(p).stem == "c":
            raise KeyboardInterrupt
        decoded.append(Path(p).stem)
        return real(p, *a, **k)

    monkeypatch.setattr(video.extract, "read_frames", stop_at_c)
    argv = ["--dataset", "nextqa", "--data_root", data, "--video_dir", vids, "--batch_size", 1]
    with pytest.raises(KeyboardInterrupt):
        extract(clip_dir, *argv)      # save_every is 100: what a and b gave is saved on the way out
    monkeypatch.setattr(video.extract, "read_frames", lambda p, *a, **k: decoded.append(Path(p).stem) or real(p, *a, **k))
    assert extract(clip_dir, *argv) == 0
    assert decoded == ["a", "b", "c", "d"]   # a, b once each
    assert list(DictFeatures(data / "nextqa" / "clipvitl14.pth").feats) == ["a", "b", "c", "d"]


def test_ambiguous_names_and_video_map(tmp_path, clip_dir):
    data, vids = tmp_path / "data", tmp_path / "videos"
    nextqa_csv(data / "nextqa" / "val.csv", ["11", "12"])
    write_video(vids / "a" / "11.mp4", 30, 25, (64, 48))
    write_video(vids / "b" / "11.mp4", 30, 25, (64, 48))
    write_video(vids / "b" / "twelve.mp4", 30, 25, (64, 48))
    assert extract(clip_dir, "--dataset", "nextqa", "--data_root", data, "--video_dir", vids) == 1
    reasons = [json.loads(line)["reason"] for line in open(data / "nextqa" / "failures_nextqa.jsonl")]
    assert reasons[0].startswith("ambiguous: 2 videos named '11'") and reasons[1].startswith("missing")
    (tmp_path / "map.json").write_text(json.dumps({"11": "a/11.mp4", "12": "b/twelve"}))
    assert extract(clip_dir, "--dataset", "nextqa", "--data_root", data, "--video_dir", vids,
                   "--video_map", tmp_path / "map.json") == 0
    assert sorted(DictFeatures(data / "nextqa" / "clipvitl14.pth").feats) == ["11", "12"]


# ---- torchrun ----

def test_two_torchrun_processes_write_what_one_does(tmp_path, clip_dir):
    vids = tmp_path / "videos"
    for i in range(5):
        write_video(vids / f"clip{i}.mp4", 30 + 9 * i, 25, (64, 48))
    (vids / "broken.mp4").write_bytes(b"\x01" * 2000)
    argv = ["--dataset", "folder", "--video_dir", vids, "--fps", 3, "--skip_bad", "--batch_size", 8]
    assert extract(clip_dir, *argv, "--output", tmp_path / "one.pth") == 0
    (tmp_path / "failures_folder.jsonl").unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(REPO / "extract_features.py"), *map(str, argv), "--output", str(tmp_path / "two.pth"),
                        "--clip_model", str(clip_dir), "--device", "cpu", "--num_workers", "0", "--quiet"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = safe_load(tmp_path / "one.pth"), safe_load(tmp_path / "two.pth")
    assert list(one) == list(two) == [f"clip{i}" for i in range(5)]   # each video once, in one file
    for k in one:
        torch.testing.assert_close(one[k].float(), two[k].float(), atol=2e-3, rtol=2e-3)
    assert [json.loads(line)["key"] for line in open(tmp_path / "failures_folder.jsonl")] == ["broken"]
    assert not (tmp_path / "two.pth.parts").exists()


# ---- text: TextVid features and memory.pkl ----

def test_textvid_features_and_memory(tmp_path, clip_dir, encoder):
    from dataloader.textvid import TextVidDataset
    from toyworld.synthetic import build
    build(tmp_path / "w", seed=1, n_textvid=5, n_nextqa=0, n_nextqa_train=0, n_egos=0, write_model=False)
    data = tmp_path / "w" / "data"
    assert extract(clip_dir, "--dataset", "textvid", "--data_root", data, "--overwrite") == 0
    tideos = json.loads((data / "textvid" / "textvid.json").read_text())
    for t in tideos:
        rows = load_pickled_tensor(data / "textvid" / "features" / f"{t['idx']}.pkl")
        texts = [s for fr in t["frames"] for s in fr.values()]
        assert rows.dtype == torch.float16 and rows.shape == (len(texts), 768)
        torch.testing.assert_close(rows.float(), encoder.texts(texts), atol=2e-3, rtol=2e-3)
    ds = TextVidDataset(data, None)   # the reader accepts the folder (it checks every tideo has its file)
    t0 = ds.tideos[0]
    assert ds.frames(t0, np.random.default_rng(0)).shape == (len(t0.counts), 768)

    lines = ["a man is cooking", "", "two dogs play in the snow", "a " * 100 + "very long sentence"]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    assert extract(clip_dir, "--dataset", "memory", "--sentences", tmp_path / "captions.txt", "--data_root", data,
                   "--overwrite") == 0
    mem = load_memory(data / "textvid" / "memory.pkl")
    kept = [s for s in lines if s]
    assert mem.shape == (3, 768) and mem.dtype == torch.float16  # the bank is kept in fp16
    torch.testing.assert_close(mem.float(), encoder.texts(kept), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(mem.float().norm(dim=-1), torch.ones(3), atol=2e-3, rtol=0)
    # same sentences again: already done; other sentences: refused without --overwrite
    assert extract(clip_dir, "--dataset", "memory", "--sentences", tmp_path / "captions.txt", "--data_root", data) == 0
    (tmp_path / "other.txt").write_text("something else\n")
    assert extract(clip_dir, "--dataset", "memory", "--sentences", tmp_path / "other.txt", "--data_root", data) == 1


def test_cli_errors_are_one_line(tmp_path, clip_dir, capsys):
    assert extract(clip_dir, "--dataset", "folder", "--video_dir", tmp_path) == 1
    assert "needs --output" in capsys.readouterr().err
    assert extract(clip_dir, "--dataset", "nextqa", "--data_root", tmp_path, "--video_dir", tmp_path) == 1
    assert "no annotations" in capsys.readouterr().err
    assert extract(clip_dir, "--dataset", "mvbench", "--mvbench_root", tmp_path, "--tasks", "nope") == 1
    assert "unknown MVBench task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extract_features.get_args(["--dataset", "nextqa", "--num_frames", "8"])


# ---- faults that lose nothing, output that does not depend on interruptions ----

def test_any_exception_in_one_video_is_its_failure(tmp_path, clip_dir, monkeypatch):
    """A frame that PIL refuses with an error that is no OSError (a decompression bomb) fails that video
    only: the others are written, the failure is listed with the exception's type and message."""
    import PIL.Image
    data, vids = tmp_path / "data", tmp_path / "videos"
    nextqa_csv(data / "nextqa" / "val.csv", ["a", "bomb", "c"])
    write_video(vids / "a.mp4", 30, 25, (64, 48))
    write_frame_folder(vids / "bomb", 6, size=(400, 300))
    write_video(vids / "c.mp4", 30, 25, (64, 48))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 40000)  # 400x300 frames are > 2x that: a "bomb"
    argv = ["--dataset", "nextqa", "--data_root", data, "--video_dir", vids, "--skip_bad"]
    assert extract(clip_dir, *argv) == 0
    assert list(DictFeatures(data / "nextqa" / "clipvitl14.pth").feats) == ["a", "c"]
    fails = [json.loads(line) for line in open(data / "nextqa" / "failures_nextqa.jsonl")]
    assert [f["key"] for f in fails] == ["bomb"]
    assert fails[0]["reason"].startswith("unreadable: DecompressionBombError: Image size (120000 pixels) exceeds")


def test_resumed_extraction_equals_an_uninterrupted_one_bit_for_bit(tmp_path, clip_dir, monkeypatch):
    """Videos of different lengths, encoded in groups of 3 in batches of 7 frames: a run stopped by
    --max_videos, and one stopped by Ctrl-C in the middle of a group, each resumed, write exactly the
    file an uninterrupted run writes."""
    vids = tmp_path / "videos"
    names = [f"v{i}" for i in range(8)]
    for i, v in enumerate(names):
        write_video(vids / f"{v}.mp4", 25 * (2 + i % 3), 25, (64, 48), code=False)

    def root(name):
        data = tmp_path / name
        nextqa_csv(data / "nextqa" / "val.csv", names)
        return data

    def argv(data, *more):
        return ["--dataset", "nextqa", "--data_root", data, "--video_dir", vids, "--batch_size", 7, "--group", 3,
                "--save_every", 1, *more]

    def feats(data):
        return safe_load(data / "nextqa" / "clipvitl14.pth")

    whole = root("whole")
    assert extract(clip_dir, *argv(whole)) == 0
    # stopped after one group, then resumed
    cut = root("cut")
    assert extract(clip_dir, *argv(cut, "--max_videos", 2)) == 0
    assert sum(len(safe_load(p)) for p in (cut / "nextqa" / "clipvitl14.pth.parts").glob("part-*.pth")) == 3
    assert extract(clip_dir, *argv(cut)) == 0
    # Ctrl-C while v4 (the middle of the second group) is read: the first group is kept
    real = video.extract.read_frames

    def stop_at_v4(p, *a, **k):
        if Path(p).stem == "v4":
            raise KeyboardInterrupt
        return real(p, *a, **k)

    killed = root("killed")
    monkeypatch.setattr(video.extract, "read_frames", stop_at_v4)
    with pytest.raises(KeyboardInterrupt):
        extract(clip_dir, *argv(killed))
    monkeypatch.setattr(video.extract, "read_frames", real)
    assert extract(clip_dir, *argv(killed)) == 0
    want = feats(whole)
    assert list(want) == names
    for data in (cut, killed):
        got = feats(data)
        assert list(got) == names and all(torch.equal(got[k], want[k]) for k in names)
        assert (data / "nextqa" / "clipvitl14.pth").read_bytes() == (whole / "nextqa" / "clipvitl14.pth").read_bytes()


def test_resume_with_another_group_or_batch_size_is_refused_naming_the_flag(tmp_path, clip_dir, capsys):
    """Which frames are encoded together moves the features (by up to ~1e-3): a resumed run with another
    --batch_size or --group was accepted and mixed features of two groupings in one file."""
    vids, data = tmp_path / "videos", tmp_path / "data"
    names = [f"v{i}" for i in range(5)]
    for i, v in enumerate(names):
        write_video(vids / f"{v}.mp4", 25 * (2 + i % 3), 25, (64, 48), code=False)
    nextqa_csv(data / "nextqa" / "val.csv", names)
    argv = ["--dataset", "nextqa", "--data_root", data, "--video_dir", vids, "--save_every", 1]
    assert extract(clip_dir, *argv, "--batch_size", 7, "--group", 3, "--max_videos", 2) == 0
    parts = data / "nextqa" / "clipvitl14.pth.parts"
    capsys.readouterr()
    for other, said, same in ((["--batch_size", 8, "--group", 3], "--batch_size: 7 there, 8 now", "--batch_size 7"),
                              (["--batch_size", 7, "--group", 2], "--group: 3 there, 2 now", "--group 3"),
                              (["--batch_size", 32], "--batch_size: 7 there, 32 now; --group: 3 there, 2 now",
                               "--batch_size 7 --group 3")):
        assert extract(clip_dir, *argv, *other) == 1
        err = capsys.readouterr().err
        assert f"{parts} holds features made with other settings ({said}); rerun with {same} to continue them" in err
    assert extract(clip_dir, *argv, "--batch_size", 7, "--group", 3) == 0
    assert list(safe_load(data / "nextqa" / "clipvitl14.pth")) == names


def test_second_extraction_into_one_output_is_refused(tmp_path, clip_dir, capsys):
    """An output another run holds is refused at once, naming that run (the lock is `.<file>.lock`)."""
    from util.lock import OutputLock
    data, vids = tmp_path / "data", tmp_path / "videos"
    nextqa_csv(data / "nextqa" / "val.csv", ["a"])
    write_video(vids / "a.mp4", 30, 25, (64, 48))
    out = data / "nextqa" / "clipvitl14.pth"
    with OutputLock(out.parent / ".clipvitl14.pth.lock", "x"):
        assert extract(clip_dir, "--dataset", "nextqa", "--data_root", data, "--video_dir", vids) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"extract_features.py: error: --output {out} is in use by another run (pid {os.getpid()}")
    assert not out.exists()
    assert extract(clip_dir, "--dataset", "nextqa", "--data_root", data, "--video_dir", vids) == 0
