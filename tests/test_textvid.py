"""TextVid at scale (dataloader/textvid/): the memory-mapped index and the packed features give exactly
the items of the earlier reader (tests/textvid_reference.py) for every (seed, epoch, index) and flag;
every error message is the earlier one; the streamed json reader equals json.load at any window size;
the index is built once, shared, rebuilt when the json changes (never used stale), written under a lock
by one process (two processes, torchrun ranks); packing resumes and is atomic."""
import itertools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest
import torch

import dataloader.textvid.features as features
import dataloader.textvid.index as index_mod
import dataloader.textvid.tideo as tideo_mod
from dataloader.base import load_json
from dataloader.textvid import TextVidDataset
from dataloader.textvid.index import SourceKey, locations, open_index
from dataloader.textvid.tideo import read_tideos
from textvid_reference import ReferenceTextVidDataset
from util.errors import DataError, InputError, MissingFileError

REPO = Path(__file__).resolve().parents[1]
N = 14

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_tideos(n=N, seed=0):
    """Tideos that reach every branch of the reader: int and str ids, 1-5 frames of 1-3 entries, 1-4 QAs of
    2-5 options, answers with spaces around the letter, right answers naming others ("both", "all", "none",
    "and"), open answers absent / null / blank / text / not text, a question that is a number, summaries with
    spaces around them, text outside ASCII."""
    rng = random.Random(seed)
    tideos = []
    for i in range(n):
        frames = [{f"e{k}": f"frame {j} entry {k} of {i} é" for k in range(rng.randint(1, 3))}
                  for j in range(rng.randint(1, 5))]
        qas = []
        for j in range(rng.randint(1, 4)):
            opts = [f"option {c} of {i}.{j} ✓" for c in range(rng.randint(2, 5))]
            a = rng.randrange(len(opts))
            if rng.random() < 0.3:
                opts[a] = rng.choice(["both of them", "All of the above", "none", "this and that"])
            qa = {"question": 17 if (i, j) == (2, 0) else f"what happens in {i}.{j}", "options": opts,
                  "answer": rng.choice(["", " ", ""]) + "ABCDE"[a] + rng.choice(["", " "])}
            kind = rng.randrange(5)
            if kind:
                qa["answer_open_ended"] = [None, "", " an answer ", 3, "it rolls"][kind]
            qas.append(qa)
        tideos.append({"idx": i if i % 2 else f"v{i}", "frames": frames, "QAs": qas,
                       "global_video_caption": f" summary of {i} "})
    return tideos


def write_world(folder: Path, tideos, seed=0, **dump):
    """folder/textvid/{textvid.json, features/<idx>.pkl}: plain pickles of fp16 rows, and torch.save files of
    fp32 and bf16 rows now and then (as extraction and older tools wrote them)."""
    tv = folder / "textvid"
    (tv / "features").mkdir(parents=True, exist_ok=True)
    (tv / "textvid.json").write_text(json.dumps(tideos, **dump), encoding="utf-8")
    g = torch.Generator().manual_seed(seed)
    for i, t in enumerate(tideos):
        rows = torch.randn(sum(len(f) for f in t["frames"]), 768, generator=g)
        path = tv / "features" / f"{t['idx']}.pkl"
        if i % 5 == 3:
            torch.save(rows if i % 2 else rows.bfloat16(), path)
        else:
            with open(path, "wb") as f:
                pickle.dump(rows.half(), f)
    return tv


def pack_world(tv: Path, per_shard=12):
    index = open_index(str(tv / "textvid.json"))
    return features.pack(index, str(tv / "features"), per_shard, log=lambda *_: None)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The same world twice: the released layout, and packed (its features/ removed, so only the pack can
    serve it; shards of ~12 rows, some all fp16 and some holding fp32/bf16 sources)."""
    root = tmp_path_factory.mktemp("textvid")
    files = write_world(root / "files", make_tideos()).parent
    shutil.copytree(files, root / "packed")
    manifest = pack_world(root / "packed" / "textvid")
    assert {s["dtype"] for s in manifest["shards"]} == {"float16", "float32"}
    shutil.rmtree(root / "packed" / "textvid" / "features")
    return {"files": files, "packed": root / "packed"}


def assert_same_item(a, b):
    assert (a.index, a.id, a.kind) == (b.index, b.id, b.kind)
    assert a.video.dtype == b.video.dtype == torch.float32
    assert torch.equal(a.video.view(torch.int32), b.video.view(torch.int32))      # bit for bit
    assert a.seqs == b.seqs                                                       # tokens, spans, video slot


FLAGS = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize("layout", ["files", "packed"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join("BCOV"[k] if v else "-" for k, v in enumerate(f)))
def test_same_items_as_the_reference(worlds, builder, layout, flags):
    """Every (seed, epoch, index, kind) gives today's item, with and without --answer_balance (B),
    --video_caption (C), --openvqa (O), --variance (V), from the per-tideo files and from the pack."""
    balance, caption, openvqa, variance = flags
    kw = dict(answer_balance=balance, video_caption=caption, openvqa=openvqa, variance=0.05 if variance else 0.0,
              vaq=True, qav=balance)
    kinds = ("vqa", "caption") if caption else ("vqa",)
    for seed in (0, 5):
        ref = ReferenceTextVidDataset(worlds["files"], builder, seed=seed, **kw)
        new = TextVidDataset(worlds[layout], builder, seed=seed, **kw)
        assert len(new) == len(ref) == N
        for epoch, i, kind in itertools.product(range(3), range(N), kinds):
            assert_same_item(new[(epoch, i, kind)], ref[(epoch, i, kind)])
            assert new.question(epoch, i) == ref.question(epoch, i)
        assert_same_item(new[3], ref[3])
    assert [t.idx for t in new.tideos] == [t.idx for t in ref.tideos]
    assert [[astuple(q) for q in t.qas] for t in new.tideos] == [[astuple(q) for q in t.qas] for t in ref.tideos]


def test_pickled_dataset_reopens_its_files(worlds, builder):
    """A DataLoader started with spawn pickles the dataset: the index and the shards are reopened by path."""
    for layout in ("files", "packed"):
        ds = TextVidDataset(worlds[layout], builder, video_caption=True, openvqa=True)
        copy = pickle.loads(pickle.dumps(ds))
        for i in range(N):
            assert_same_item(copy[(1, i, "caption")], ds[(1, i, "caption")])


# ---- the same errors, with the same messages ----

def _broken(tideos):
    t = tideos
    cases = {
        "truncated": lambda: json.dumps(t)[:-7], "trailing": lambda: json.dumps(t) + " x",
        "missing comma": lambda: json.dumps(t).replace("}, {", "} {", 1), "not a list": lambda: {"a": t},
        "empty": lambda: [], "entry not a dict": lambda: t[:3] + [5], "no idx": lambda: t[:3] + [{"frames": []}],
        "no frames": lambda: [dict(t[0], frames=[])], "frame not a dict": lambda: [dict(t[0], frames=["x"])],
        "empty frame": lambda: [dict(t[0], frames=[{"a": "b"}, {}])], "no QAs": lambda: [dict(t[0], QAs=[])],
        "QA not a dict": lambda: [dict(t[0], QAs=[[1]])],
        "no options": lambda: [dict(t[0], QAs=[{"question": "q", "answer": "A"}])],
        "one option": lambda: [dict(t[0], QAs=[{"question": "q", "options": ["a"], "answer": "A"}])],
        "option not text": lambda: [dict(t[0], QAs=[{"question": "q", "options": ["a", 2], "answer": "A"}])],
        "empty option": lambda: [dict(t[0], QAs=[{"question": "q", "options": ["a", " "], "answer": "A"}])],
        "answer E of 4": lambda: [dict(t[0], QAs=[{"question": "q", "options": list("abcd"), "answer": "E"}])],
        "answer 1": lambda: [dict(t[0], QAs=[{"question": "q", "options": list("abcd"), "answer": 1}])],
        "answer AB": lambda: [dict(t[0], QAs=[{"question": "q", "options": list("abcd"), "answer": "AB"}])],
        "no summary": lambda: t[:2] + [{k: v for k, v in t[2].items() if k != "global_video_caption"}],
        "blank summary": lambda: t[:4] + [dict(t[4], global_video_caption="  ")],
        "duplicate ids": lambda: t + [t[1], t[3]],
    }
    return cases


@pytest.mark.parametrize("case", list(_broken(make_tideos())) + ["not UTF-8", "missing features", "no such file"])
def test_errors_name_the_file_and_tideo_as_before(tmp_path, builder, case):
    tideos = make_tideos()
    tv = write_world(tmp_path, tideos)
    if case == "not UTF-8":
        raw = (tv / "textvid.json").read_bytes()
        (tv / "textvid.json").write_bytes(raw[:500] + b"\n\xff" + raw[500:])
    elif case == "missing features":
        for k in (3, 4, 5, 6, 7, 8):
            (tv / "features" / f"{tideos[k]['idx']}.pkl").unlink()
    elif case == "no such file":
        (tv / "textvid.json").unlink()
    else:
        value = _broken(tideos)[case]()
        (tv / "textvid.json").write_text(value if isinstance(value, str) else json.dumps(value))
    errors = []
    for Dataset in (ReferenceTextVidDataset, TextVidDataset):
        with pytest.raises(InputError) as e:
            Dataset(tmp_path, builder, video_caption=True)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1]
    assert "tideo" in errors[1][1] or case in ("truncated", "trailing", "missing comma", "not a list", "empty",
                                               "not UTF-8", "no such file")


def test_summary_is_checked_only_when_asked_for_and_the_index_is_kept(tmp_path, builder):
    tideos = make_tideos()
    del tideos[5]["global_video_caption"]
    tv = write_world(tmp_path, tideos)
    assert len(TextVidDataset(tmp_path, builder)) == N                      # builds the index
    built = os.stat(tv / "textvid.index.arrow").st_mtime_ns
    with pytest.raises(DataError, match=r"tideo 5: no 'global_video_caption' \(needed by --video_caption\)"):
        TextVidDataset(tmp_path, builder, video_caption=True)
    assert os.stat(tv / "textvid.index.arrow").st_mtime_ns == built


# ---- the streamed reader ----

@pytest.mark.parametrize("window", [1, 7, 64, 1 << 24])
def test_streamed_reading_equals_json_load_at_any_window(tmp_path, monkeypatch, window):
    monkeypatch.setattr(tideo_mod, "WINDOW", window)
    tideos = make_tideos(6)
    p = tmp_path / "t.json"
    for dump, bom in [({}, b""), ({"indent": 2, "ensure_ascii": False}, b""),
                      ({"ensure_ascii": False}, b"\xef\xbb\xbf"), ({"separators": (",", ":")}, b"")]:
        p.write_bytes(bom + json.dumps(tideos, **dump).encode() + b"\n\n")
        assert [t for _, t in read_tideos(str(p))] == tideos
    for text in ['[{"idx": 1}, {"idx": 2},]', '[{"idx": 1} {"idx": 2}]', '[{"idx": 1}, {"idx": "é', '[] []', '{}',
                 '[{"idx": 1}] 5', ' ', '[']:
        p.write_text(text)
        with pytest.raises(DataError) as got:
            list(read_tideos(str(p)))
        try:
            raw = load_json(p)
            want = f"no tideos in {p} (an empty list)" if isinstance(raw, list) else f"{p}: expected a list of tideos"
        except DataError as e:
            want = str(e)
        assert str(got.value) == want, text


# ---- the index: built once, shared, never stale ----

def test_index_is_built_once_and_rebuilt_when_the_json_changes(tmp_path, builder, capfd):
    tideos = make_tideos()
    tv = write_world(tmp_path, tideos)
    ds = TextVidDataset(tmp_path, builder)
    assert "indexing" in capfd.readouterr().err
    path = tv / "textvid.index.arrow"
    assert ds.tideos.path == str(path)
    stamp = os.stat(path).st_mtime_ns
    TextVidDataset(tmp_path, builder)
    assert "indexing" not in capfd.readouterr().err and os.stat(path).st_mtime_ns == stamp
    # the same size and mtime, another question at the head: its digest differs, so the index is rebuilt
    js = tv / "textvid.json"
    st = os.stat(js)
    text = js.read_text(encoding="utf-8")
    js.write_text(text.replace("what happens in 0.0", "what happens in 0.X", 1), encoding="utf-8")
    os.utime(js, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(js).st_size == st.st_size
    ds = TextVidDataset(tmp_path, builder)
    assert "indexing" in capfd.readouterr().err
    assert ds.tideos[0].qas[0].question == "what happens in 0.X"
    # a longer file: rebuilt; a file that is not an index where the index goes: rebuilt, never an error
    write_world(tmp_path, tideos + [dict(tideos[1], idx="extra")])
    assert len(TextVidDataset(tmp_path, builder)) == N + 1
    path.write_bytes(b"not an arrow file")
    assert len(TextVidDataset(tmp_path, builder)) == N + 1
    assert "indexing" in capfd.readouterr().err


def test_read_only_data_folder_keeps_the_index_in_the_cache(tmp_path, builder, monkeypatch):
    tv = write_world(tmp_path / "data", make_tideos())
    monkeypatch.setenv("TOPA_CACHE", str(tmp_path / "cache"))
    access = os.access
    monkeypatch.setattr(index_mod.os, "access", lambda p, mode: access(p, mode) and Path(p) != tv)
    ds = TextVidDataset(tmp_path / "data", builder)
    assert not (tv / "textvid.index.arrow").exists()
    assert Path(ds.tideos.path).parent == tmp_path / "cache" / "textvid"
    assert Path(ds.tideos.path) == locations(str(tv / "textvid.json"))[1]


def _index_cmd(tv):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "dataloader.textvid", "index", str(tv)], env


def test_processes_racing_build_the_index_once(tmp_path):
    """Three processes started together: one builds under the lock, the others wait and find it built."""
    tv = tmp_path / "textvid"
    tv.mkdir()
    (tv / "textvid.json").write_text(json.dumps(make_tideos(3000)))
    cmd, env = _index_cmd(tv)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert sum("indexing" in err for _, err in outs) == 1
    assert sum("built in" in out for out, _ in outs) == 1 and sum("up to date" in out for out, _ in outs) == 2
    assert "3000 tideos" in outs[0][0]


def test_torchrun_rank0_builds_and_the_other_rank_waits(tmp_path, builder):
    write_world(tmp_path, make_tideos())
    script = tmp_path / "ranks.py"
    script.write_text(
        "import sys, torch.distributed as d\nfrom dataloader.textvid import TextVidDataset\n"
        "d.init_process_group('gloo')\n"
        f"ds = TextVidDataset({str(tmp_path)!r}, None)\n"
        "sys.stdout.write(f'rank {d.get_rank()} {len(ds)}\\n')\nsys.stdout.flush()\nd.destroy_process_group()\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("indexing") == 1
    ranks = sorted(line.split()[1:3] for line in p.stdout.splitlines() if line.startswith("rank"))
    assert ranks == [["0", str(N)], ["1", str(N)]], p.stdout      # one write per rank: lines never interleave


# ---- packing ----

def test_pack_resumes_after_an_interruption_and_is_atomic(tmp_path, builder, monkeypatch):
    a = write_world(tmp_path / "a", make_tideos())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = tmp_path / "b" / "textvid"
    pack_world(a)
    real, reads = features.TideoFiles.read, []

    def killed_at_the_tenth_file(self, t):
        reads.append(t.idx)
        if len(reads) == 10:
            raise KeyboardInterrupt
        return real(self, t)

    monkeypatch.setattr(features.TideoFiles, "read", killed_at_the_tenth_file)
    with pytest.raises(KeyboardInterrupt):
        pack_world(b)
    packed = b / "features_packed"
    assert not (packed / "pack.json").exists() and not list(packed.glob(".*.tmp"))   # the shard in progress: gone
    done = {p.name: os.stat(p).st_ino for p in packed.glob("shard-*.npy")}
    n_shards = len(load_json(a / "features_packed" / "pack.json")["shards"])
    assert 1 <= len(done) < n_shards and sorted(done) == [f"shard-{k:05d}.npy" for k in range(len(done))]
    (packed / f".shard-{len(done):05d}.npy.x1y2.tmp").write_bytes(b"what a SIGKILL leaves")
    ds = TextVidDataset(tmp_path / "b", builder)                     # an incomplete pack is not read
    assert isinstance(ds.features, features.TideoFiles)
    monkeypatch.setattr(features.TideoFiles, "read", real)
    manifest = pack_world(b)
    assert not list(packed.glob(".*.tmp"))
    assert {p: os.stat(packed / p).st_ino for p in done} == done     # kept, not written again
    for p in sorted((a / "features_packed").iterdir()):
        if p.name not in ("pack.json", ".topa.lock"):
            assert p.read_bytes() == (packed / p.name).read_bytes(), p.name
    assert manifest["shards"] == load_json(a / "features_packed" / "pack.json")["shards"]
    assert isinstance(TextVidDataset(tmp_path / "b", builder).features, features.PackedFeatures)


def test_stale_pack_is_not_read(tmp_path, builder, capfd):
    tv = write_world(tmp_path, make_tideos())
    pack_world(tv)
    assert isinstance(TextVidDataset(tmp_path, builder).features, features.PackedFeatures)
    (tv / "features" / "notes.txt").write_text("features/ changed after packing")
    ds = TextVidDataset(tmp_path, builder)
    assert isinstance(ds.features, features.TideoFiles)
    assert "changed after" in capfd.readouterr().err
    pack_world(tv)
    assert isinstance(TextVidDataset(tmp_path, builder).features, features.PackedFeatures)
    write_world(tmp_path, make_tideos(seed=1), seed=1)              # another json (and features)
    ds = TextVidDataset(tmp_path, builder)
    assert isinstance(ds.features, features.TideoFiles)
    assert "packed from another version" in capfd.readouterr().err
    shutil.rmtree(tv / "features")                                  # nothing current left to read
    with pytest.raises(MissingFileError, match="TextVid feature folder not found: .*packed from another version"):
        TextVidDataset(tmp_path, builder)


def test_pack_checks_every_file_as_the_dataset_does(tmp_path, builder):
    tideos = make_tideos()
    tv = write_world(tmp_path, tideos)
    victim = tv / "features" / f"{tideos[6]['idx']}.pkl"
    rows = pickle.loads(victim.read_bytes())
    rows[1, 5] = float("nan")
    victim.write_bytes(pickle.dumps(rows))
    with pytest.raises(DataError) as want:
        TextVidDataset(tmp_path, builder)[6]
    with pytest.raises(DataError) as got:
        pack_world(tv)
    assert str(got.value) == str(want.value) and "tideo v6 hold a non-finite value (nan) in row 1" in str(got.value)
    assert not (tv / "features_packed" / "pack.json").exists()


def test_cli_index_and_pack_print_what_they_found(tmp_path):
    tv = write_world(tmp_path / "data", make_tideos())
    cmd, env = _index_cmd(tmp_path / "data")                        # the data root works too
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stats = open_index(str(tv / "textvid.json")).stats()
    assert f"{N} tideos" in out.stdout and f"{stats['qas']} QAs" in out.stdout and f"{stats['rows']} feature rows" \
        in out.stdout and "built in" in out.stdout and "every tideo has its file" in out.stdout
    out = subprocess.run(cmd[:-2] + ["pack", str(tv), "--shard_mib", "0.05"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout and f"packed {N} tideos, {stats['rows']} rows" in out.stdout
    assert "current" in out.stdout and SourceKey.of(tv / "textvid.json") == open_index(str(tv / "textvid.json")).key
    (tv / "textvid.json").write_text("[1]")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == \
        f"python -m dataloader.textvid: error: {tv / 'textvid.json'}: entry 0 is not a tideo with an 'idx'"
