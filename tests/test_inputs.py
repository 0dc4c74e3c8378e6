"""Bad input never gives a silent number: non-finite features, memory rows and checkpoint tensors,
truncated files, malformed params.json, csv encodings and empty files, empty options, checkpoint
settings that do not match the run, and train.py's one-line errors (also from DataLoader workers).
eval.py's own end-to-end cases are in tests/test_eval.py."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import train
from dataloader.base import DictFeatures, NpyDirFeatures
from dataloader.benchmarks import build_mcqa_dataset
from dataloader.textvid import TextVidDataset
from llama.adapter import TOPAArgs, adapter_hint
from llama.build import ModelConfig, check_recorded_settings, load_topa
from llama.memory import load_memory
from llama.model import ModelArgs
from llama.weights import load_topa_checkpoint
from util.errors import CheckpointError, ConfigError, DataError, one_line
from util.files import load_pickled_tensor, safe_load

REPO = Path(__file__).resolve().parents[1]
HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]


def nextqa_csv(rows) -> str:
    return ",".join(HEADER) + "\n" + "".join(",".join(r) + "\n" for r in rows)


def nextqa_row(video="100", qid="0", a0="a dog"):
    return [video, "30", "640", "480", "what is in the park", "0", qid, "DO", a0, "a cat", "a girl", "a boy", "a cup"]


def nextqa_root(tmp_path, text, encoding="utf-8", videos=("100", "101")):
    d = tmp_path / "nextqa"
    d.mkdir(parents=True, exist_ok=True)
    (d / "val.csv").write_bytes(text.encode(encoding))
    torch.save({v: torch.randn(12, 768) for v in videos}, d / "clipvitl14.pth")
    return tmp_path


# ---------------------------------------------------------------- non-finite values

def test_nan_or_inf_feature_rows_name_file_video_and_row(tmp_path, builder):
    bad = torch.randn(12, 768)
    bad[7, 3] = float("nan")
    torch.save({"100": torch.randn(12, 768), "101": bad}, tmp_path / "feats.pth")
    src = DictFeatures(tmp_path / "feats.pth")
    with pytest.raises(DataError, match=r"feats\.pth: features of video '101' .*nan.* row 7"):
        src("101")
    # the dataset checks every video's rows before anything is scored
    root = nextqa_root(tmp_path / "w", nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "1")]))
    torch.save({"100": torch.randn(12, 768), "101": bad}, root / "nextqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=r"clipvitl14\.pth: features of video '101' .* row 7"):
        build_mcqa_dataset("nextqa", root, "val", builder)
    # .npy folders (EgoSchema) are checked when a video is read
    arr = np.random.randn(20, 768).astype(np.float32)
    arr[13, 0] = np.inf
    np.save(tmp_path / "uid1.npy", arr)
    with pytest.raises(DataError, match=r"uid1\.npy: features of video 'uid1' .*inf.* row 13"):
        NpyDirFeatures(tmp_path)("uid1")


def test_nan_in_textvid_features_memory_and_checkpoint_tensors(tmp_path, builder):
    # TextVid: one tideo whose second frame row is NaN
    tv = tmp_path / "textvid"
    (tv / "features").mkdir(parents=True)
    qa = {"question": "what?", "options": ["a", "b", "c", "d", "e"], "answer": "A"}
    (tv / "textvid.json").write_text(json.dumps([{"idx": 5, "frames": [{"c": "x"}, {"c": "y"}], "QAs": [qa],
                                                  "global_video_caption": "a video"}]))
    rows = torch.randn(2, 768)
    rows[1, 0] = float("nan")
    torch.save(rows, tv / "features" / "5.pkl")
    with pytest.raises(DataError, match=r"5\.pkl: features of tideo 5 .* row 1"):
        TextVidDataset(tmp_path, builder)[0]
    # memory.pkl
    mem = torch.nn.functional.normalize(torch.randn(30, 768), dim=-1)
    mem[21, 5] = float("inf")
    torch.save(mem, tmp_path / "memory.pkl")
    with pytest.raises(DataError, match=r"memory\.pkl: memory row 21 .*inf"):
        load_memory(tmp_path / "memory.pkl")
    # a TOPA checkpoint tensor
    gate = torch.zeros(1, 4, 1, 1)
    gate[0, 2] = float("nan")
    torch.save({"model": {"visual_proj.weight": torch.zeros(64, 768), "layers.1.attention.gate2": gate},
                "args": argparse.Namespace(model="tiny")}, tmp_path / "topa.pth")
    with pytest.raises(CheckpointError, match=r"topa\.pth: tensor 'layers\.1\.attention\.gate2' .*nan"):
        load_topa_checkpoint(tmp_path / "topa.pth")


# ---------------------------------------------------------------- unreadable files

def test_truncated_and_empty_files_name_the_file(tmp_path):
    torch.save({"model": {"w": torch.randn(200, 200)}}, tmp_path / "full.pth")
    raw = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("cut.pth", "empty.pth"):
        with pytest.raises(CheckpointError, match=name):
            load_topa_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="cut.pth"):
        safe_load(tmp_path / "cut.pth", mmap=True)
    np.save(tmp_path / "v.npy", np.random.randn(40, 768).astype(np.float32))
    raw = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "v.npy").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "e.npy").write_bytes(b"")
    src = NpyDirFeatures(tmp_path)
    for vid in ("v", "e"):
        with pytest.raises(DataError, match=rf"{vid}\.npy"):
            src.n_rows(vid)
        with pytest.raises(DataError, match=rf"{vid}\.npy"):
            src(vid)
    # pickled tensors (TextVid features, memory): truncated is not "refused as unsafe"
    import pickle
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(torch.randn(30, 768))[:500])
    (tmp_path / "z.pkl").write_bytes(b"")
    for name in ("t.pkl", "z.pkl"):
        with pytest.raises(DataError, match=rf"{name}: not a readable pickled tensor"):
            load_pickled_tensor(tmp_path / name)


@pytest.mark.parametrize("params", ['{"dim": 64, "n_layers": 2, "n_heads": 0}', '{"dim": 64, "n_layers": "2"}',
                                    '{"dim": 64, "norm_eps": -1}', '{"dim": 64,', '[64]', ''])
def test_malformed_params_json_names_the_file(tmp_path, params):
    (tmp_path / "params.json").write_text(params)
    with pytest.raises(CheckpointError, match="params.json"):
        ModelArgs.from_params_json(tmp_path / "params.json")


# ---------------------------------------------------------------- annotation files

def test_latin1_csv_names_file_and_line(tmp_path, builder):
    text = nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "1", a0="a caf\u00e9")])
    root = nextqa_root(tmp_path, text, encoding="latin-1")
    with pytest.raises(DataError, match=r"val\.csv:3: not UTF-8"):
        build_mcqa_dataset("nextqa", root, "val", builder)


def test_csv_with_a_utf8_bom_reads(tmp_path, builder):
    root = nextqa_root(tmp_path, nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "1")]), encoding="utf-8-sig")
    assert (root / "nextqa" / "val.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    ds = build_mcqa_dataset("nextqa", root, "val", builder)
    assert [r.qid for r in ds.records] == ["100_0", "101_1"]


def test_header_only_and_empty_annotation_files_are_errors(tmp_path, builder):
    root = nextqa_root(tmp_path, nextqa_csv([]))
    with pytest.raises(DataError, match=r"no questions in .*val\.csv"):
        build_mcqa_dataset("nextqa", root, "val", builder)
    (tmp_path / "tvqa").mkdir()
    (tmp_path / "tvqa" / "tvqa_val.jsonl").write_text("\n")
    torch.save({}, tmp_path / "tvqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=r"no questions in .*tvqa_val\.jsonl"):
        build_mcqa_dataset("tvqa", tmp_path, "val", builder)
    (tmp_path / "star").mkdir()
    (tmp_path / "star" / "STAR_val.json").write_text("[]")
    torch.save({}, tmp_path / "star" / "clipvitl14.pth")
    with pytest.raises(DataError, match=r"no questions in .*STAR_val\.json"):
        build_mcqa_dataset("star", tmp_path, "val", builder)


def test_empty_option_names_file_row_and_question(tmp_path, builder):
    root = nextqa_root(tmp_path, nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "7", a0=" ")]))
    with pytest.raises(DataError, match=r"val\.csv:3: question 101_7: option 0 is empty"):
        build_mcqa_dataset("nextqa", root, "val", builder)


def test_skip_missing_that_drops_every_question_is_an_error(tmp_path, builder):
    root = nextqa_root(tmp_path, nextqa_csv([nextqa_row("100", "0")]), videos=("999",))
    with pytest.raises(DataError, match="no question left"):
        build_mcqa_dataset("nextqa", root, "val", builder, skip_missing=True)


# ---------------------------------------------------------------- recorded settings

def released_args(**kw) -> argparse.Namespace:
    """The `args` of a checkpoint written by the original code (its flag names; no rope_theta flag)."""
    base = dict(model="7B", llama_model_path="./pretrained/llama2/", adapter_len=50, adapter_layer=32, max_feats=10,
                bias=3.5, llama2=True, llama3=False, max_seq_len=150, batch_size=18, dataset="textvid", blr=5e-3)
    base.update(kw)
    return argparse.Namespace(**base)


def run_settings(tmp_path, family="llama2", model="7B", rope_in_params=None, **kw):
    """A ModelConfig and resolved TOPAArgs for a 32-layer params.json (tiny dim) under tmp_path."""
    params = {"dim": 64, "n_layers": 32, "n_heads": 4, "multiple_of": 8, "norm_eps": 1e-5, "vocab_size": -1}
    if rope_in_params is not None:
        params["rope_theta"] = rope_in_params
    (tmp_path / model).mkdir(parents=True, exist_ok=True)
    (tmp_path / model / "params.json").write_text(json.dumps(params))
    cfg = ModelConfig(llama_model_path=str(tmp_path), model=model, family=family, **kw)
    args = TOPAArgs.from_params_json(tmp_path / model / "params.json", adapter_len=cfg.adapter_len,
                                     adapter_layer=cfg.adapter_layer, max_feats=cfg.max_feats, bias=cfg.bias,
                                     rope_theta=cfg.rope_theta)
    return cfg, args


def check(ckpt, cfg_args):
    cfg, args = cfg_args
    native = TOPAArgs.from_params_json(Path(cfg.llama_model_path) / cfg.model / "params.json").rope_theta  # own theta
    return check_recorded_settings(ckpt, cfg, "topa.pth", args, native_theta=native)


def test_backbone_family_mismatch_names_the_flag(tmp_path, capsys):
    llama3 = {"model": {}, "args": released_args(model="8B", llama2=False, llama3=True)}
    with pytest.raises(CheckpointError, match=r"topa\.pth .*Llama-3 backbone.*pass --llama3"):
        check(llama3, run_settings(tmp_path, "llama2", "8B"))
    llama2 = {"model": {}, "args": released_args()}
    with pytest.raises(CheckpointError, match=r"Llama-2 backbone.*pass --llama2"):
        check(llama2, run_settings(tmp_path, "llama3", "7B", rope_theta=10000.0))
    with pytest.raises(CheckpointError, match=r"--model 7B, this run loads --model 13B"):
        check(llama2, run_settings(tmp_path, "llama2", "13B"))
    # ours record the family in `config` too; the flat `args` carry --llama2/--llama3 as booleans
    ours = {"model": {}, "config": {"model": {"family": "llama3", "model": "8B", "rope_theta": 10000.0,
                                              "adapter_len": 50, "adapter_layer": None, "max_feats": 10, "bias": 3.5}}}
    with pytest.raises(CheckpointError, match="pass --llama3"):
        check(ours, run_settings(tmp_path, "llama2", "8B"))
    assert check(ours, run_settings(tmp_path, "llama3", "8B", rope_theta=10000.0, bias=3.5,
                                    rope_in_params=500000.0)) == []


def test_rope_theta_mismatch_names_the_flag(tmp_path):
    released3 = {"model": {}, "args": released_args(model="8B", llama2=False, llama3=True)}
    # Llama-3 params.json says 500000; the original code ran with 10000
    with pytest.raises(CheckpointError, match=r"RoPE theta 10000, this run uses 500000 \(pass --rope_theta 10000\)"):
        check(released3, run_settings(tmp_path, "llama3", "8B", rope_in_params=500000.0))
    check(released3, run_settings(tmp_path, "llama3", "8B", rope_in_params=500000.0, rope_theta=10000.0))
    # ours: None = params.json's value at training time
    ours = {"model": {}, "args": argparse.Namespace(llama2=False, llama3=True, model="8B", rope_theta=None,
                                                    adapter_len=50, adapter_layer=None, max_feats=10, bias=3.0)}
    with pytest.raises(CheckpointError, match=r"RoPE theta 500000, this run uses 10000 \(pass --rope_theta 500000\)"):
        check(ours, run_settings(tmp_path, "llama3", "8B", rope_in_params=500000.0, rope_theta=10000.0))
    check(ours, run_settings(tmp_path, "llama3", "8B", rope_in_params=500000.0))


def test_adapter_and_frame_settings_mismatch_name_the_flags(tmp_path):
    # 25 x 64 rows would not fit 32 layers; 100 x 16 == 50 x 32: same tensor shape, other math
    ck = {"model": {}, "args": released_args(adapter_len=100, adapter_layer=16, max_feats=8)}
    with pytest.raises(CheckpointError) as e:
        check(ck, run_settings(tmp_path))
    msg = str(e.value)
    assert "pass --adapter_len 100" in msg and "pass --adapter_layer 16" in msg and "pass --max_feats 8" in msg


def test_harmless_differences_and_missing_records_are_notes(tmp_path, capsys):
    notes = check({"model": {}, "args": released_args(bias=3.5, batch_size=4, dataset="nextqa")},
                  run_settings(tmp_path, bias=3.0))
    assert len(notes) == 1 and "--bias 3.5" in notes[0] and "harmless" in notes[0]
    notes = check({"model": {}, "optimizer": {}}, run_settings(tmp_path))
    assert len(notes) == 1 and "records no training settings" in notes[0]
    notes = check({"model": {}, "args": argparse.Namespace(model="7B")}, run_settings(tmp_path))
    assert len(notes) == 1 and "does not record llama2/llama3, rope_theta, adapter_len" in notes[0]
    out = capsys.readouterr().err  # notes go to stderr (stdout carries results, e.g. ask.py answers)
    assert out.count("note:") == 3


def test_adapter_hint_names_the_recorded_length_and_layers():
    args = TOPAArgs(dim=64, n_layers=4, n_heads=4, vocab_size=100, adapter_len=4, adapter_layer=4)
    # a checkpoint of 6 x 2 rows: the old hint said "--adapter_len 3" (12 rows / this run's 4 layers)
    assert "--adapter_len 6 and --adapter_layer 2" in adapter_hint(12, args, {"adapter_len": 6, "adapter_layer": 2})
    hint = adapter_hint(12, args)
    assert "does not record" in hint and "--adapter_len 3 with --adapter_layer 4" in hint \
        and "--adapter_layer 3 with --adapter_len 4" in hint


# ---------------------------------------------------------------- flags and the one error path

def test_textvid_with_another_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="--textvid .*--dataset says nextqa"):
        train.main(train.get_args(["--textvid", "--dataset", "nextqa"]))
    from engine.config import TrainConfig
    assert TrainConfig.from_args(train.get_args(["--textvid"])).data.dataset == "textvid"
    assert TrainConfig.from_args(train.get_args(["--dataset", "textvid"])).textvid
    cfg = TrainConfig.from_args(train.get_args([]))
    assert (cfg.data.dataset, cfg.textvid, cfg.eval_datasets) == ("nextqa", False, ["nextqa"])


class _Bad(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DataError(f"/data/feats/{i}.pkl: features of tideo {i} hold a non-finite value (nan) in row 2")


def test_errors_from_dataloader_workers_stay_one_line():
    with pytest.raises(DataError) as e:
        next(iter(DataLoader(_Bad(), batch_size=2, num_workers=1)))
    assert "Traceback" in str(e.value)   # what torch hands over
    assert one_line(e.value) == "/data/feats/0.pkl: features of tideo 0 hold a non-finite value (nan) in row 2"


def error_line(stderr: str, prog: str) -> str:
    """The one error line of a failed run (progress bars aside); no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [seg for line in stderr.splitlines() for seg in line.split("\r") if "error:" in seg]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world["root"]


def train_cmd(root, out, *extra):
    return ["--llama_model_path", str(root / "pretrained" / "llama2"), "--model", "tiny", "--data_root",
            str(root / "data"), "--output_dir", str(out), "--device", "cpu", "--precision", "fp32",
            "--no_tensorboard", "--adapter_len", "4", "--batch_size", "4", "--epochs", "1", *map(str, extra)]


def test_train_input_errors_are_one_line_also_from_workers(world, tmp_path):
    """train.py: a NaN row in a TextVid feature file, read by a DataLoader worker, ends the run with one
    line naming the file, tideo and row (no checkpoint written)."""
    data = tmp_path / "data"
    shutil.copytree(world / "data" / "textvid", data / "textvid", ignore=shutil.ignore_patterns("memory.pkl"))
    tideos = json.loads((data / "textvid" / "textvid.json").read_text())
    victim = str(tideos[0]["idx"])
    rows = torch.load(data / "textvid" / "features" / f"{victim}.pkl")
    rows[2, 10] = float("nan")
    torch.save(rows, data / "textvid" / "features" / f"{victim}.pkl")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = train_cmd(world, tmp_path / "out", "--textvid", "--num_workers", "2", "--max_seq_len", "60")
    args[args.index("--data_root") + 1] = str(data)
    p = subprocess.run([sys.executable, str(REPO / "train.py")] + args, capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    err = error_line(p.stderr, "train.py")
    assert f"{victim}.pkl: features of tideo {victim} hold a non-finite value (nan) in row 2" in err
    assert not list((tmp_path / "out").glob("checkpoint_*.pth"))


def test_finetune_compares_the_recorded_settings_before_the_backbone(world, tmp_path):
    """--finetune from a checkpoint that records a Llama-3 backbone, on a Llama-2 run: an error naming
    the flag, before the (here unreadable) backbone is touched."""
    cfg = ModelConfig(llama_model_path=str(world / "pretrained" / "llama2"), model="tiny", adapter_len=4)
    model, _, _ = load_topa(cfg, torch.device("cpu"), torch.float32)
    args = argparse.Namespace(**vars(train.get_args(train_cmd(world, tmp_path))))
    args.llama2, args.llama3 = False, True
    torch.save({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "args": args},
               tmp_path / "llama3.pth")
    garbage = tmp_path / "pretrained"
    shutil.copytree(world / "pretrained" / "llama2", garbage)
    (garbage / "tiny" / "consolidated.00.pth").write_bytes(b"not a checkpoint")
    cmd = train_cmd(world, tmp_path / "ft", "--dataset", "nextqa", "--finetune", "--resume", tmp_path / "llama3.pth")
    cmd[cmd.index("--llama_model_path") + 1] = str(garbage)
    with pytest.raises(CheckpointError, match=r"llama3\.pth does not match this run: .*Llama-3 backbone.*pass --llama3"):
        train.main(train.get_args(cmd))
    args.llama2, args.llama3 = True, False   # the same checkpoint recording Llama-2 reaches the backbone
    torch.save({"model": model.trainable_state_dict(), "optimizer": {}, "epoch": 0, "args": args},
               tmp_path / "llama2.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth"):
        train.main(train.get_args(cmd + ["--resume", str(tmp_path / "llama2.pth")]))


# ---------------------------------------------------------------- what a file must be, not only its shape

def test_features_that_are_not_floating_point_are_refused(tmp_path, builder):
    """A boolean or string .npy, or a dict of integer tensors: an error naming the file and the video,
    found when the annotations are checked (before any model), never features of 1.0."""
    np.save(tmp_path / "u1.npy", np.ones((20, 768), dtype=bool))
    with pytest.raises(DataError, match=r"u1\.npy: features of video 'u1' are bool, not floating-point"):
        NpyDirFeatures(tmp_path).n_rows("u1")
    np.save(tmp_path / "u2.npy", np.full((20, 768), "0.5"))
    with pytest.raises(DataError, match=r"u2\.npy: features of video 'u2' are <U3, not floating-point"):
        NpyDirFeatures(tmp_path).n_rows("u2")
    root = nextqa_root(tmp_path / "w", nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "1")]))
    torch.save({"100": torch.randn(12, 768), "101": torch.ones(12, 768, dtype=torch.int64)},
               root / "nextqa" / "clipvitl14.pth")
    with pytest.raises(DataError, match=r"clipvitl14\.pth: features of video '101' are torch\.int64"):
        build_mcqa_dataset("nextqa", root, "val", builder)


def test_degenerate_and_non_unit_memory(tmp_path, capsys):
    """Zero rows or rows all alike make every score ignore the video: errors naming the file (and row);
    rows that are not unit-norm: a warning (the projection's temperature assumes unit norm)."""
    good = torch.nn.functional.normalize(torch.randn(50, 768), dim=-1)
    zero = good.clone()
    zero[17] = 0
    torch.save(zero, tmp_path / "zero.pkl")
    with pytest.raises(DataError, match=r"zero\.pkl: memory row 17 is all zeros"):
        load_memory(tmp_path / "zero.pkl")
    torch.save(good[3].repeat(50, 1), tmp_path / "same.pkl")
    with pytest.raises(DataError, match=r"same\.pkl: all 50 memory rows are the same vector"):
        load_memory(tmp_path / "same.pkl")
    torch.save(torch.ones(50, 768, dtype=torch.bool), tmp_path / "bool.pkl")
    with pytest.raises(DataError, match=r"bool\.pkl: memory must hold float features"):
        load_memory(tmp_path / "bool.pkl")
    torch.save(good * 3, tmp_path / "long.pkl")
    capsys.readouterr()
    assert load_memory(tmp_path / "long.pkl").shape == (50, 768)
    assert "long.pkl: memory rows are not unit-norm (norms 3 .. 3)" in capsys.readouterr().err
    torch.save(good, tmp_path / "good.pkl")
    assert torch.equal(load_memory(tmp_path / "good.pkl"), good.half())   # kept in fp16 (README: llama/memory.py)
    assert capsys.readouterr().err == ""


def star_item(qid, answer, texts):
    return {"question_id": qid, "video_id": "v1", "question": "What did the person do?", "start": 0, "end": 5,
            "answer": answer, "choices": [{"choice_id": i, "choice": t} for i, t in enumerate(texts)]}


def test_gold_text_matching_two_options_is_an_error_naming_the_item(tmp_path):
    """STAR and MVBench give the answer as text: when it matches two options the gold option is not
    known (it used to be the first copy)."""
    from dataloader import mvbench, star
    (tmp_path / "star").mkdir()
    items = [star_item("Interaction_T1_1", "took the cup", ["took the cup", "sat down", "ran", "ate"]),
             star_item("Interaction_T1_2", "took the cup", ["sat down", "took the cup", "ran", "took the cup"])]
    (tmp_path / "star" / "STAR_val.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"STAR_val\.json\[1\]: question Interaction_T1_2: answer 'took the cup' "
                                        r"matches options \[1, 3\]"):
        star.read_records(tmp_path, "val")
    (tmp_path / "act.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "What happens?", "candidates": ["x", "y"], "answer": "y"},
        {"video": "b.mp4", "question": "What happens?", "candidates": ["y", "x", "y"], "answer": "y"}]))
    with pytest.raises(DataError, match=r"act\.json\[1\]: item act/1: answer 'y' matches options \[0, 2\]"):
        mvbench.read_task(str(tmp_path / "act.json"), "Action Sequence", "act")


def test_repeated_question_id_names_file_and_rows(tmp_path, builder):
    root = nextqa_root(tmp_path, nextqa_csv([nextqa_row("100", "0"), nextqa_row("101", "1"), nextqa_row("100", "0")]))
    with pytest.raises(DataError, match=r"val\.csv:4: question id 100_0 repeats the one of .*val\.csv:2"):
        build_mcqa_dataset("nextqa", root, "val", builder)


def test_ask_applies_the_question_and_option_rules():
    from engine.api import QAConfig
    from engine.asking import AskConfig
    for kw, msg in ((dict(question=" "), "--question: the question text is empty"),
                    (dict(question="Why?", options=["a", " "]), "--options: option 1 is empty"),
                    (dict(question="Why?", options=["a", "b", "a "]), "--options: options 0 and 2 are the same text")):
        with pytest.raises(ConfigError, match=msg):
            AskConfig(video="v.mp4", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda:0: "):
            QAConfig(device="cuda:0")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("prog", ["eval.py", "train.py", "extract_features.py", "ask.py"])
def test_device_cuda_without_cuda_is_one_line(prog, tmp_path):
    """Every entry point: one line naming --device (it was a torch assertion), before anything loads."""
    args = {"eval.py": ["--output_dir", tmp_path / "out"], "train.py": ["--output_dir", tmp_path / "out"],
            "extract_features.py": ["--dataset", "folder", "--video_dir", tmp_path, "--output", tmp_path / "f.pth"],
            "ask.py": ["v.mp4", "--describe"]}[prog]
    p = subprocess.run([sys.executable, str(REPO / prog), "--device", "cuda", *map(str, args)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 1
    line = error_line(p.stderr, prog)
    assert "--device cuda: this torch is built without CUDA" in line or "--device cuda: no CUDA device" in line


# eval.py, train.py, ask.py, extract_features.py: a flag that another one (or the dataset) makes meaningless was
# ignored, or read as the other one; each is one line naming both, when the config is built
CONTRADICTIONS = [
    ("eval.py", ["--dataset", "egos", "--test", "--split", "val"], "--test means --split test, but --split says val"),
    ("eval.py", ["--dataset", "tvqa", "--truncate_dialogue"], "--truncate_dialogue cuts the subtitles that --sub adds"),
    ("eval.py", ["--dataset", "nextqa", "--truncate_dialogue", "--sub"], "--sub is for TVQA, not nextqa"),
    ("eval.py", ["--dataset", "star", "--truncate_dialogue"], "--truncate_dialogue is for TVQA, not star"),
    ("eval.py", ["--dataset", "nextqa", "--no_kv_cache"], "--no_kv_cache is for the generation benchmarks"),
    ("train.py", ["--dataset", "tvqa", "--truncate_dialogue"], "--truncate_dialogue cuts the subtitles"),
    ("train.py", ["--resume", "out/checkpoint_3.pth", "--start_epoch", "2"],
     "--start_epoch 2 with --resume: the checkpoint says where the run continues"),
    ("ask.py", ["v.mp4", "--describe", "--options", "a", "b"], "--describe takes no --options"),
    ("extract_features.py", ["--dataset", "mvbench", "--mvbench_root", "M", "--fps", "2"],
     "--fps is for --dataset nextqa, star, tvqa, egos, folder; --dataset mvbench does not use it"),
    ("extract_features.py", ["--dataset", "msrvtt", "--splits", "val"], "--splits is for --dataset nextqa"),
    ("extract_features.py", ["--dataset", "nextqa", "--tasks", "a"], "--tasks is for --dataset mvbench"),
    ("extract_features.py", ["--dataset", "memory", "--sentences", "s.txt", "--group", "4"], "--group is for"),
    ("extract_features.py", ["--dataset", "memory", "--sentences", "s.txt", "--video_dir", "v"], "--video_dir is for"),
    ("extract_features.py", ["--dataset", "egos", "--annotations", "a.json"], "--annotations is for --dataset msrvtt"),
]


def _config_of(prog: str, argv):
    """What `prog` builds from `argv` before it reads anything (its config, or its parsed flags)."""
    if prog == "eval.py":
        from engine.config import EvalConfig, eval_parser
        return EvalConfig.from_args(eval_parser().parse_args(argv))
    if prog == "train.py":
        from engine.config import TrainConfig
        return TrainConfig.from_args(train.get_args(argv))
    if prog == "ask.py":
        import ask
        from engine.asking import AskConfig
        a = ask.get_args(argv)
        return AskConfig(video=a.video, question=a.question, options=a.options, describe=a.describe)
    import extract_features
    return extract_features.get_args(argv)


@pytest.mark.parametrize("prog,argv,msg", CONTRADICTIONS, ids=[f"{p}:{' '.join(a)}" for p, a, _ in CONTRADICTIONS])
def test_flag_contradictions_are_refused_when_the_config_is_built(prog, argv, msg, capsys):
    with pytest.raises((ConfigError, SystemExit)) as e:
        _config_of(prog, argv)
    said = capsys.readouterr().err if e.type is SystemExit else str(e.value)
    assert msg in said


def test_eval_test_with_split_is_refused_before_any_data_is_read(tmp_path):
    """`--dataset egos --test --split val` ran val (and read the data before anything said so)."""
    p = subprocess.run([sys.executable, str(REPO / "eval.py"), "--dataset", "egos", "--test", "--split", "val",
                        "--data_root", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 1
    assert error_line(p.stderr, "eval.py") == ("eval.py: error: --test means --split test, but --split says val: drop "
                                               "one of them")
    from engine.config import EvalConfig, eval_parser
    assert EvalConfig.from_args(eval_parser().parse_args(["--dataset", "egos", "--test"])).split == "test"
    assert EvalConfig.from_args(eval_parser().parse_args(["--dataset", "egos", "--test", "--split", "test"])).split \
        == "test"


def test_lr_zero_is_accepted_negative_and_non_finite_are_not():
    """--lr 0 (losses measured, weights kept) was refused; torch's optimizers and the original accept it."""
    from engine.config import TrainConfig
    assert TrainConfig.from_args(train.get_args(["--lr", "0"])).optim.absolute_lr(8, 1) == 0.0
    for value in ("-0.5", "nan", "inf"):
        with pytest.raises(ConfigError, match=rf"^--lr must be a number >= 0, got {value}"):
            TrainConfig.from_args(train.get_args(["--lr", value]))


@pytest.mark.parametrize("flag,value", [("--lr", "-1"), ("--blr", "0"), ("--min_lr", "nan"), ("--weight_decay", "-0.1"),
                                        ("--clip_grad", "-1"), ("--tau", "0"), ("--variance", "-1"),
                                        ("--rope_theta", "-5"), ("--adapter_layer", "0"), ("--eval_batch_size", "0")])
def test_numeric_flags_are_checked_with_the_config(flag, value):
    """A flag out of range is a ConfigError when the config is built (before any file is read)."""
    from engine.config import TrainConfig, train_parser
    a = train_parser().parse_args([flag, value])
    with pytest.raises(ConfigError, match=rf"^{flag} must be "):
        TrainConfig.from_args(a)


def test_tokenizer_of_another_vocabulary_names_both_files(tiny_world, fixtures_dir, tmp_path):
    """A tokenizer.model that does not belong to the backbone: one line naming both (it named the
    embedding tensor), before the weights are read."""
    d = tmp_path / "llama2"
    shutil.copytree(tiny_world["root"] / "pretrained" / "llama2" / "tiny", d / "tiny")
    shutil.copy(fixtures_dir / "llama2" / "tokenizer.model", d / "tokenizer.model")
    with pytest.raises(CheckpointError, match=rf"the tokenizer {d}/tokenizer\.model has 32000 tokens but the "
                                              rf"backbone {d}/tiny has an embedding for \d+"):
        load_topa(ModelConfig(llama_model_path=str(d), model="tiny", adapter_len=4), torch.device("cpu"), torch.float32)


def test_checkpoint_of_another_width_names_widths_not_matching_flags(tiny_world, tmp_path):
    """A TOPA checkpoint trained on a wider backbone: the error names both widths and suggests no flag
    that already matches (it suggested --adapter_len/--adapter_layer, which matched)."""
    cfg = ModelConfig(llama_model_path=str(tiny_world["root"] / "pretrained" / "llama2"), model="tiny", adapter_len=4)
    model, _, _ = load_topa(cfg, torch.device("cpu"), torch.float32)
    state = {k: torch.zeros(*v.shape[:-1], 96) if k == "adapter_query.weight" else v
             for k, v in model.trainable_state_dict().items()}
    recorded = argparse.Namespace(model="tiny", adapter_len=4, adapter_layer=2, max_feats=10, llama2=True, llama3=False,
                                  bias=3.0)
    torch.save({"model": state, "args": recorded}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError) as e:
        load_topa(cfg, torch.device("cpu"), torch.float32, resume=str(tmp_path / "wide.pth"))
    msg = str(e.value)
    assert "wide.pth was trained on a backbone of width 96" in msg and "has width 64" in msg
    assert "--adapter_len" not in msg and "--model" not in msg


def test_symlink_loop_under_video_dir_is_one_line(tmp_path):
    from video.sources import VideoIndex
    (tmp_path / "videos" / "a").mkdir(parents=True)
    (tmp_path / "videos" / "a" / "x.mp4").write_bytes(b"")
    os.symlink(tmp_path / "videos", tmp_path / "videos" / "a" / "back")
    with pytest.raises(ConfigError, match=r"videos/a/back is a symbolic link to .*videos, a folder above it"):
        VideoIndex(str(tmp_path / "videos"))


def test_sentence_files_that_are_empty_or_not_utf8(tmp_path):
    from video.text_features import read_sentences
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: no sentences"):
        read_sentences(str(tmp_path / "empty.txt"))
    (tmp_path / "latin.txt").write_bytes("a cat\na caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt:2: not UTF-8 text"):
        read_sentences(str(tmp_path / "latin.txt"))
    (tmp_path / "crlf.txt").write_bytes(b"a cat\r\na dog\r\n")
    assert read_sentences(str(tmp_path / "crlf.txt")) == ["a cat", "a dog"]
