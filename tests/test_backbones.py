"""Llama-3.1 and Llama-3.2 backbones (docs/model.md): Meta's "llama3" RoPE scaling read from params.json and
config.json (logits equal to transformers' LlamaForCausalLM below and above original_max_position_embeddings,
and a test that fails when the scaling is skipped or a band edge moves by one frequency), tied embeddings
(one tensor, never saved), the recorded RoPE scaling of TOPA checkpoints, and pre-alignment + zero-shot
evaluation + exact resume on a tiny Llama-3.2-style world."""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as eval_script
import llama.build
import llama.model
import train
from llama.adapter import is_trainable
from llama.build import ModelConfig, load_topa
from llama.hf import hf_params
from llama.model import ModelArgs, RopeScaling
from llama.weights import load_meta_checkpoint, load_topa_checkpoint
from test_loading import write_hf_folder
from test_train import TEXTVID, base_args, known_accuracy, max_diff
from toyworld.tiny import make_tiny_llama, write_meta_checkpoint
from util.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# head_dim 32, theta 500000: wavelengths 2*pi*500000^(k/16) = 6.3, 14.3, 32.4, 73.6, 167, ... 1955, 4440, 10086,
# so with Meta's original 8192 (edges 2048 and 8192) frequency 7 (1955) sits just below the high-frequency edge,
# 8 (4440) in the band and 9 (10086) just above the low-frequency edge; with original 64 (edges 16 and 64):
# 1 (14.3) below, 2 (32.4) in the band, 3 (73.6) above.
TINY = dict(dim=64, n_layers=2, n_heads=2, n_kv_heads=1, rope_theta=500000.0, ffn_dim_multiplier=1.3,
            multiple_of=32, llama2_style=False)
BACKBONES = {  # name -> (Meta params.json extras, tied, config.json rope_scaling)
    "3.1": (dict(use_scaled_rope=True), False, dict(factor=8.0, original_max_position_embeddings=8192)),
    "3.2": (dict(use_scaled_rope=True, tie_embeddings=True), True,
            dict(factor=32.0, original_max_position_embeddings=8192)),
}


def llama3_scaling(factor, original_max_position_embeddings, low=1.0, high=4.0):
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original_max_position_embeddings}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request, fixtures_dir, tmp_path_factory):
    """One random tiny Llama-3.1- or 3.2-style model as a Meta folder (`meta/tiny/`, params.json with
    `use_scaled_rope` and no factor, as Meta's; 3.2: output.weight a copy of the embedding) and as Hugging
    Face folders (`hf/`: config.json's rope_scaling; 3.2: tie_word_embeddings and no lm_head), plus `hf_small/`,
    the same weights with original_max_position_embeddings 64."""
    name = request.param
    meta_extra, tied, scaling = BACKBONES[name]
    root = tmp_path_factory.mktemp(f"llama{name}")
    tok = fixtures_dir / "llama3" / "tokenizer.model"
    mdir = make_tiny_llama(root / "meta", tok, seed=11, **TINY, **meta_extra)
    state = load_meta_checkpoint(mdir)
    params = json.loads((mdir / "params.json").read_text())
    for k in state:  # sharp attention, so that rotary angles show in the logits (which stay of order 0.1)
        if k.endswith(("wq.weight", "wk.weight")):
            state[k] = state[k] * 16
    if tied:
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    write_meta_checkpoint(mdir, params, state)
    args = ModelArgs(**{k: params[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
                                               "ffn_dim_multiplier", "norm_eps", "rope_theta")},
                     vocab_size=state["tok_embeddings.weight"].shape[0])
    for folder, original in (("hf", scaling["original_max_position_embeddings"]), ("hf_small", 64)):
        write_hf_folder(root / folder, state, args, n_files=1, tie=tied,
                        rope_scaling=llama3_scaling(scaling["factor"], original))
        (root / folder / "original").mkdir()
        (root / folder / "original" / "tokenizer.model").write_bytes(tok.read_bytes())
    return {"name": name, "root": root, "tied": tied, "factor": scaling["factor"], "state": state}


def load(path, model="tiny", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(llama_model_path=str(path), model=model, family="llama3", adapter_len=3, max_feats=4, **kw)
    return load_topa(cfg, torch.device("cpu"), torch.float32)[0], cfg


def tokens(n):
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 128000, (1, n), generator=g)


def compare(ours, theirs, ids, step=1):
    """Max |logit difference| of our model and transformers' on `ids` at positions 0, step, 2*step, ...
    RoPE sees only distances between positions, so `step` sets the longest distance: (len(ids) - 1) * step."""
    pos = torch.arange(ids.shape[1])[None] * step
    with torch.no_grad():
        mine = ours.logits(ours.hidden(ids, pos, None))
        ref = theirs(ids, position_ids=pos).logits
    assert ref.abs().max() > 0.05  # not a degenerate comparison
    return (mine - ref).abs().max().item()


@pytest.fixture(scope="module")
def transformers_models(backbone):
    transformers = pytest.importorskip("transformers")
    return {f: transformers.LlamaForCausalLM.from_pretrained(backbone["root"] / f, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
            for f in ("hf", "hf_small")}


def test_args_from_both_formats(backbone):
    root, factor = backbone["root"], backbone["factor"]
    meta, _ = load(root / "meta")
    hf, _ = load(root / "hf")
    want = RopeScaling(factor=factor)  # low 1, high 4, original 8192: Meta's
    assert meta.args.rope_scaling == hf.args.rope_scaling == want
    assert meta.args.tie_embeddings == hf.args.tie_embeddings == backbone["tied"]
    small, _ = load(root / "hf_small")
    assert small.args.rope_scaling == RopeScaling(factor=factor, original_max_position_embeddings=64)


def test_logits_equal_transformers_below_and_above_the_original_length(backbone, transformers_models):
    root = backbone["root"]
    ids = tokens(24)
    meta, _ = load(root / "meta")
    hf, _ = load(root / "hf")
    small, _ = load(root / "hf_small")
    for step in (1, 400, 1000):      # distances up to 23, 9200, 23000; Meta's original length is 8192
        assert compare(meta, transformers_models["hf"], ids, step) <= 1e-5, step
        assert compare(hf, transformers_models["hf"], ids, step) <= 1e-5, step
    long = tokens(100)               # distances up to 99 and 990 cross the small original length 64
    for step in (1, 10):
        assert compare(small, transformers_models["hf_small"], long, step) <= 1e-5, step


def _moved_edge(which):
    """llama3_inv_freq with one frequency on the wrong side of a band edge (an off-by-one in the band
    membership): `high` puts the last unscaled frequency into the band, `low` the first fully scaled one."""
    right = llama.model.llama3_inv_freq

    def wrong(inv_freq, s):
        out = right(inv_freq, s)
        wavelen = 2 * math.pi / inv_freq
        L = s.original_max_position_embeddings
        k = int((wavelen < L / s.high_freq_factor).nonzero().max()) if which == "high" else \
            int((wavelen > L / s.low_freq_factor).nonzero().min())
        a = (L / wavelen[k] - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        out = out.clone()
        out[k] = (1 - a) * inv_freq[k] / s.factor + a * inv_freq[k]
        return out
    return wrong


@pytest.mark.parametrize("mistake", ["skipped", "high", "low"])
def test_the_comparison_fails_without_scaling_or_with_a_band_edge_off_by_one(
        backbone, transformers_models, monkeypatch, mistake):
    """What the test above catches: the same comparison, with the scaling left out or one band edge moved
    by one frequency, is off by far more than 1e-5 once distances reach the original length (below it the
    rotation angles of the frequencies concerned stay small)."""
    wrong = (lambda inv_freq, s: inv_freq) if mistake == "skipped" else _moved_edge(mistake)
    monkeypatch.setattr(llama.model, "llama3_inv_freq", wrong)
    meta, _ = load(backbone["root"] / "meta")
    small, _ = load(backbone["root"] / "hf_small")
    assert compare(meta, transformers_models["hf"], tokens(24), 1000) > 1e-3
    assert compare(small, transformers_models["hf_small"], tokens(100), 1) > 1e-3


def test_scaled_frequencies_follow_meta_reference_loop():
    """llama3_inv_freq == the per-frequency loop of Meta's first Llama-3.1 release, written out here."""
    for hd, theta, s in ((32, 500000.0, RopeScaling(8.0)), (128, 500000.0, RopeScaling(32.0)),
                         (32, 500000.0, RopeScaling(8.0, 1.0, 4.0, 64)),
                         (16, 10000.0, RopeScaling(4.0, 2.0, 8.0, 256))):
        freqs = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
        expect = []
        for f in freqs.tolist():
            wavelen = 2 * math.pi / f
            L, lo, hi = s.original_max_position_embeddings, s.low_freq_factor, s.high_freq_factor
            if wavelen < L / hi:
                expect.append(f)
            elif wavelen > L / lo:
                expect.append(f / s.factor)
            else:
                a = (L / wavelen - lo) / (hi - lo)
                expect.append((1 - a) * f / s.factor + a * f)
        got = llama.model.rope_inv_freq(hd, theta, s)
        assert torch.allclose(got, torch.tensor(expect), rtol=1e-6, atol=0), (hd, s)
        assert not torch.allclose(got, freqs)
    # factor 1 is no scaling (the flag's "1")
    assert torch.allclose(llama.model.llama3_inv_freq(freqs, RopeScaling(1.0)), freqs, rtol=1e-6)


def test_tied_folders_share_one_tensor(backbone):
    root = backbone["root"]
    if not backbone["tied"]:  # Llama-3.1: its own output layer, in both formats
        for folder in ("meta", "hf"):
            model, _ = load(root / folder)
            assert model.output.weight is not model.tok_embeddings.weight
            assert "output.weight" in [n for n, _ in model.named_parameters()]
            assert "output.weight" not in model.trainable_state_dict()
        return
    for folder in ("meta", "hf"):
        model, _ = load(root / folder)
        assert model.output.weight is model.tok_embeddings.weight
        names = [n for n, _ in model.named_parameters()]
        assert "tok_embeddings.weight" in names and "output.weight" not in names
        assert not is_trainable("tok_embeddings.weight") and not is_trainable("output.weight")
        assert "output.weight" not in model.trainable_state_dict()
        assert torch.equal(model.tok_embeddings.weight, backbone["state"]["tok_embeddings.weight"].float())
    # a Meta folder whose output layer differs from the embedding is not tied (and gets Meta's factor 8)
    state = dict(backbone["state"])
    state["output.weight"] = state["output.weight"].clone()
    state["output.weight"][5, 3] += 1
    untied = root / "untied"
    make_tiny_llama(untied, root / "meta" / "tokenizer.model", seed=11, use_scaled_rope=True, **TINY)
    torch.save(state, untied / "tiny" / "consolidated.00.pth")
    model, _ = load(untied)
    assert not model.args.tie_embeddings and model.args.rope_scaling.factor == 8.0
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()


def test_rope_scaling_factor_flag_overrides_the_backbone(backbone):
    root = backbone["root"]
    model, cfg = load(root / "meta", rope_scaling_factor=1.0)
    assert model.args.rope_scaling is None and cfg.rope_scaling_factor == 1.0
    model, cfg = load(root / "hf", rope_scaling_factor=16.0)
    assert model.args.rope_scaling == RopeScaling(16.0) and cfg.rope_scaling_factor == 16.0
    model, cfg = load(root / "hf")   # resolved in place: what the run records
    assert cfg.rope_scaling_factor == backbone["factor"]
    with pytest.raises(ConfigError, match=r"--rope_scaling_factor must be >= 1"):
        ModelConfig(rope_scaling_factor=0.5)


# ---------------------------------------------------------------- what config.json / params.json may say

def test_other_rope_types_and_bad_scaling_are_refused_naming_the_field(tmp_path):
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 128, "rms_norm_eps": 1e-5}
    cases = [({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
              r"config.json: rope_scaling.rope_type 'yarn' is not supported"),
             ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling.type 'linear' is not supported"),
             ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling.type 'dynamic'"),
             ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
              r"rope_parameters.rope_type 'longrope'"),
             ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
              r"rope_scaling of rope_type \"llama3\" needs numbers low_freq_factor, high_freq_factor, "
              r"original_max_position_embeddings"),
             ({"rope_scaling": llama3_scaling(8.0, 8192, low=4.0, high=1.0)},
              r"rope_scaling: RoPE scaling .* not valid"),
             ({"rope_scaling": [8]}, r"'rope_scaling' must be a JSON object")]
    for i, (extra, msg) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**base, **extra}))
        with pytest.raises(CheckpointError, match=msg):
            hf_params(folder)
    # transformers 5 writes the scaling into rope_parameters
    folder = tmp_path / "v5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**base, "rope_parameters": {
        **llama3_scaling(32.0, 8192), "rope_theta": 500000.0}, "tie_word_embeddings": True}))
    p = hf_params(folder)
    assert p["rope_scaling"] == RopeScaling(32.0) and p["rope_theta"] == 500000.0 and p["tie_embeddings"]


def test_config_fields_read_loosely_are_refused_naming_the_field_and_the_file(backbone, tmp_path):
    """Each of these loaded, and changed the math: a llama3 scaling without rope_type was no scaling, the
    string "false" tied the embeddings and dropped the file's lm_head, 8192.5 was a position count, and of
    two disagreeing rope objects one was picked. Each is refused when the folder is loaded, before any
    weight is read, naming the field and config.json."""
    import shutil
    src = backbone["root"] / "hf"
    good = json.loads((src / "config.json").read_text())
    scaling = good["rope_scaling"]
    no_type = {k: v for k, v in scaling.items() if k != "rope_type"}
    cases = [
        ({"rope_scaling": no_type}, "config.json: rope_scaling holds scaling numbers (factor, low_freq_factor, "
                                    "high_freq_factor, original_max_position_embeddings) but no rope_type"),
        ({"tie_word_embeddings": "false"}, "config.json: 'tie_word_embeddings' = 'false' is not true or false"),
        ({"rope_scaling": {**scaling, "original_max_position_embeddings": 8192.5}},
         "config.json: rope_scaling: 'original_max_position_embeddings' = 8192.5 is not an integer >= 1"),
        ({"rope_parameters": {**scaling, "factor": 2 * scaling["factor"], "rope_theta": good["rope_theta"]}},
         f"config.json: rope_parameters and rope_scaling disagree (factor {2 * scaling['factor']:g}, "),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
         "config.json: rope_theta 500000 and rope_parameters.rope_theta 10000 disagree"),
        ({"rope_scaling": {**scaling, "type": "linear"}}, "rope_type 'llama3' and type 'linear' disagree"),
        ({"hidden_size": 64.0}, "config.json: 'hidden_size' = 64.0 is not an integer >= 1"),
        ({"rms_norm_eps": "1e-5"}, "config.json: 'rms_norm_eps' = '1e-5' is not a finite number > 0"),
        ({"rope_theta": float("nan")}, "config.json: 'rope_theta' = nan is not a finite number > 0"),
        ({"attention_bias": "false"}, "config.json: 'attention_bias' = 'false' is not true or false"),
        ({"max_position_embeddings": "4k"}, "config.json: 'max_position_embeddings' = '4k' is not an integer >= 1"),
    ]
    for i, (extra, msg) in enumerate(cases):
        folder = tmp_path / str(i)
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps({**good, **extra}))
        with pytest.raises(CheckpointError) as e:
            load(folder)
        assert msg in str(e.value) and str(folder / "config.json") in str(e.value), (extra, str(e.value))
    # the same numbers in both places, as transformers 5 may write them, are one scaling
    both = tmp_path / "both"
    shutil.copytree(src, both)
    (both / "config.json").write_text(json.dumps({**good, "rope_parameters": {**scaling, "rope_theta": 500000}}))
    assert load(both)[0].args.rope_scaling == RopeScaling(backbone["factor"])


def test_the_context_length_follows_the_backbone(backbone, tiny_world):
    """The positions the Python API's prompts must fit: config.json's max_position_embeddings, else the
    family's (Llama-2 4096, Llama-3 8192, RoPE-scaled Llama-3.1/3.2 131072)."""
    root = backbone["root"]
    assert llama.build.context_length(ModelConfig(llama_model_path=str(root / "meta"), model="tiny",
                                                  family="llama3")) == 131072
    assert llama.build.context_length(ModelConfig(llama_model_path=str(root / "hf"), family="llama3")) == 4096
    assert llama.build.context_length(ModelConfig(llama_model_path=str(tiny_world["root"] / "pretrained" / "llama2"),
                                                  model="tiny")) == 4096


def test_params_json_fields_are_typed(tmp_path):
    """params.json: Infinity was a rope_theta, a file without dim or n_heads took 7B's, 2.0 heads passed."""
    params = {"dim": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 128, "multiple_of": 32, "norm_eps": 1e-5}
    for change, msg in ((dict(rope_theta=float("inf")), "'rope_theta' = inf is not a finite number > 0"),
                        (dict(dim=None), "'dim' is missing (it must be an integer >= 1)"),
                        (dict(n_heads=2.0), "'n_heads' = 2.0 is not an integer >= 1"),
                        (dict(max_seq_len="2048"), "'max_seq_len' = '2048' is not an integer >= 1"),
                        (dict(vocab_size=-2), "'vocab_size' = -2 is not an integer >= 1 (or -1)")):
        written = {k: v for k, v in {**params, **change}.items() if v is not None}
        (tmp_path / "params.json").write_text(json.dumps(written))
        with pytest.raises(CheckpointError, match=rf"params\.json: {msg}".replace("(", r"\(").replace(")", r"\)")):
            ModelArgs.from_params_json(tmp_path / "params.json")


def test_params_json_scaling(tmp_path):
    params = {"dim": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 128, "multiple_of": 32, "norm_eps": 1e-5}

    def read(**extra):
        (tmp_path / "params.json").write_text(json.dumps({**params, **extra}))
        return ModelArgs.from_params_json(tmp_path / "params.json")

    assert read().rope_scaling is None and read(use_scaled_rope=False).rope_scaling is None
    assert read(use_scaled_rope=True).rope_scaling == RopeScaling(8.0)   # Meta's reference apply_scaling
    assert read(use_scaled_rope=True, rope_scaling_factor=16, rope_high_freq_factor=2).rope_scaling == \
        RopeScaling(16.0, high_freq_factor=2.0)                          # Meta's names from Llama-4 on
    for extra, msg in (({"use_scaled_rope": "yes"}, r"'use_scaled_rope' = 'yes' is not true or false"),
                       ({"rope_scaling_factor": 8}, r"rope_scaling_factor without use_scaled_rope=true"),
                       ({"use_scaled_rope": True, "rope_scaling_factor": 0.5}, r"RoPE scaling .* not valid"),
                       ({"use_scaled_rope": True, "rope_scaling_factor": True}, r"'rope_scaling_factor' = True")):
        with pytest.raises(CheckpointError, match=msg):
            read(**extra)


# ---------------------------------------------------------------- recorded settings

def released(**kw):
    """`args` as the original code recorded them (it knew Llama-2 and Llama-3 only)."""
    return argparse.Namespace(**{"model": "tiny", "llama2": False, "llama3": True, "adapter_len": 3,
                                 "adapter_layer": 2, "max_feats": 4, "bias": 3.0, **kw})


def test_checkpoint_of_another_llama3_release_is_refused_before_the_backbone_loads(backbone, tmp_path, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("the backbone was loaded")
    root, factor = backbone["root"], backbone["factor"]
    model, _ = load(root / "meta")
    weights = model.trainable_state_dict()
    llama3 = tmp_path / "llama3.pth"        # a Llama-3 (unscaled) TOPA checkpoint, as the original code wrote it
    torch.save({"model": weights, "args": released(rope_theta=None)}, llama3)
    other = tmp_path / "other.pth"          # ours, trained on the other Llama-3.x release
    then = 32.0 if factor == 8.0 else 8.0
    torch.save({"model": weights, "args": released(rope_theta=None, rope_scaling_factor=then)}, other)
    monkeypatch.setattr(llama.build, "build_model", no_build)
    for folder in ("meta", "hf"):
        cfg = ModelConfig(llama_model_path=str(root / folder), model="tiny", family="llama3", adapter_len=3,
                          max_feats=4)
        with pytest.raises(CheckpointError, match=rf"llama3\.pth does not match this run: it was trained with no "
                                                  rf"RoPE scaling \(Llama-2, Llama-3\), this run's backbone has RoPE "
                                                  rf"scaling factor {factor:g} .*--rope_scaling_factor 1\)"):
            load_topa(cfg, torch.device("cpu"), torch.float32, resume=str(llama3))
        with pytest.raises(CheckpointError, match=rf"other\.pth does not match this run: it was trained with RoPE "
                                                  rf"scaling factor {then:g} .*pass the --llama_model_path of the "
                                                  rf"backbone it was trained on, or --rope_scaling_factor {then:g}\)"):
            load_topa(cfg, torch.device("cpu"), torch.float32, resume=str(other))
    monkeypatch.undo()
    same = tmp_path / "same.pth"
    torch.save({"model": weights, "args": released(rope_theta=None, rope_scaling_factor=factor)}, same)
    cfg = ModelConfig(llama_model_path=str(root / "hf"), model="tiny", family="llama3", adapter_len=3, max_feats=4)
    got, _, _ = load_topa(cfg, torch.device("cpu"), torch.float32, resume=str(same))
    assert cfg.rope_scaling_factor == factor                 # resolved in place: what the run records
    assert got.trainable_state_dict().keys() == weights.keys()
    assert all(torch.equal(got.trainable_state_dict()[k], weights[k]) for k in weights)


# ---------------------------------------------------------------- a tiny Llama-3.2-style world, end to end

@pytest.fixture(scope="module")
def world32(tiny_world, fixtures_dir, tmp_path_factory):
    """The shared synthetic world's data with a tiny Llama-3.2-style Meta folder (real Llama-3 tokenizer,
    use_scaled_rope, output.weight a copy of the embedding)."""
    llama_dir = tmp_path_factory.mktemp("llama32")
    make_tiny_llama(llama_dir, fixtures_dir / "llama3" / "tokenizer.model", name="tiny", seed=3, std=64 ** -0.5,
                    use_scaled_rope=True, tie_embeddings=True, **TINY)
    return tiny_world["root"], llama_dir


def args32(world32, out, *extra):
    root, llama_dir = world32
    return base_args(root, out, "--llama3", "--llama_model_path", llama_dir, *extra)


def test_prealignment_eval_and_exact_resume_on_a_llama32_world(world32, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    train.main(train.get_args(args32(world32, a, *TEXTVID, "--epochs", 2)))
    train.main(train.get_args(args32(world32, b, *TEXTVID, "--epochs", 2, "--stop_after", 1)))
    train.main(train.get_args(args32(world32, b, *TEXTVID, "--epochs", 2, "--resume", b / "checkpoint_0.pth")))
    ca, cb = load_topa_checkpoint(a / "checkpoint_1.pth"), load_topa_checkpoint(b / "checkpoint_1.pth")
    assert max_diff(ca["model"], cb["model"]) <= 1e-6
    assert max_diff(ca["model"], load_topa_checkpoint(a / "checkpoint_0.pth")["model"]) > 1e-4  # it trained
    # the tied embedding is frozen, so never saved; the RoPE scaling that ran is recorded
    assert all(is_trainable(k) for k in ca["model"])
    assert not any(k.startswith(("tok_embeddings", "output")) for k in ca["model"])
    assert ca["args"].rope_scaling_factor == 32.0 and ca["config"]["model"]["rope_scaling_factor"] == 32.0
    ev = args32(world32, tmp_path / "eval", "--dataset", "nextqa", "--batch_size", 8, "--memory",
                "--resume", a / "checkpoint_1.pth")
    ev = [x for x in ev if x != "--no_tensorboard"]
    res = eval_script.main(eval_script.get_args(ev))
    assert res["total"]["total"] == 20
    preds = tmp_path / "eval" / "predictions_nextqa_val.jsonl"
    assert res["total"]["acc"] == pytest.approx(known_accuracy(world32[0], preds))
    acc = json.loads((tmp_path / "eval" / "accuracy_nextqa_val.json").read_text())
    assert acc["settings"]["config"]["model"]["rope_scaling_factor"] == 32.0


# ---------------------------------------------------------------- scripts: one per job, LLAMA= picks the row

REPO = Path(__file__).resolve().parents[1]
NEW = {"llama3_1_8b": ("8B", 32, "./pretrained/llama3_1/"), "llama3_2_3b": ("3B", 28, "./pretrained/llama3_2/"),
       "llama3_2_1b": ("1B", 16, "./pretrained/llama3_2/")}


def dry_run(script, **env):
    env = dict(os.environ, TORCHRUN=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    r = subprocess.run(["bash", str(REPO / "scripts" / script), "--dry_run"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1], {"__builtins__": {}})  # the printed vars(args)


@pytest.mark.parametrize("llama", sorted(NEW))
def test_job_scripts_run_the_new_backbones(llama):
    model, layers, path = NEW[llama]
    runs = {"pretrain.sh": dry_run("pretrain.sh", LLAMA=llama),
            "finetune.sh": dry_run("finetune.sh", LLAMA=llama, DATASET="tvqa"),
            "baseline.sh": dry_run("baseline.sh", LLAMA=llama, DATASET="star"),
            "eval/zeroshot_eval_egos.sh": dry_run("eval/zeroshot_eval_egos.sh", LLAMA=llama),
            "eval/zeroshot_eval_mvbench.sh": dry_run("eval/zeroshot_eval_mvbench.sh", LLAMA=llama)}
    for name, a in runs.items():
        assert (a["model"], a["llama3"], a["llama_model_path"]) == (model, True, path), name
        # the backbone's own RoPE theta and scaling (no released checkpoint asks for theta 10000)
        assert a["rope_theta"] is None and a["rope_scaling_factor"] is None, name
        assert a["adapter_len"] == 50, name
    for name in ("pretrain.sh", "finetune.sh", "baseline.sh"):
        assert runs[name]["adapter_layer"] == layers   # adapters on every layer of the backbone
    p, f, b = runs["pretrain.sh"], runs["finetune.sh"], runs["baseline.sh"]
    assert (p["batch_size"], p["accum_iter"], p["blr"], p["epochs"]) == (14, 8, 5e-3, 20)    # Llama-3 8B's recipe
    assert (f["batch_size"], f["accum_iter"], f["blr"], f["warmup_epochs"], f["dataset"]) == (20, 4, 5e-3, 1, "tvqa")
    assert (b["batch_size"], b["accum_iter"], b["blr"], b["warmup_epochs"], b["dataset"]) == (20, 4, 2e-2, 2, "star")
    assert f["resume"] == f"./vqa_checkpoint/checkpoint_pretrain/{llama}/checkpoint_19.pth"


def test_old_script_paths_are_the_job_scripts_and_the_path_is_passed_once():
    for job, backbone in (("pretrain", "llama2_13b"), ("finetune", "llama3_8b"), ("baseline", "llama2_7b")):
        assert dry_run(f"{job}/{backbone}.sh", LLAMA="llama3_2_1b") == dry_run(f"{job}.sh", LLAMA=backbone)
    a = dry_run("finetune.sh", LLAMA="llama3_2_1b", LLAMA_PATH="/models/Llama-3.2-1B")
    assert a["llama_model_path"] == "/models/Llama-3.2-1B"
    lines = [x for p in (REPO / "scripts").rglob("*.sh") if p.name != "demo.sh"
             for x in p.read_text().splitlines() if "--llama_model_path" in x and not x.lstrip().startswith("#")]
    assert lines == ['MODEL_ARGS=(--"$FAMILY" --model "$MODEL" --llama_model_path "$LLAMA_PATH")']  # common.sh
    r = subprocess.run(["bash", str(REPO / "scripts" / "pretrain.sh")],
                       env={"LLAMA": "llama4_8b", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown LLAMA=llama4_8b (llama2_7b,llama2_13b,llama3_8b,llama3_1_8b," in r.stderr
