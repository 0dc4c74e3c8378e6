"""Loading the backbone: Meta shards streamed into the model (bit for bit the merged load, and its host
memory measured), Hugging Face folders (the same model as the Meta folder, and the same logits as
transformers' own Llama), how folders and tokenizers are found and what is refused, the fp16 memory
bank, and the bf16 capability check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llama.adapter import TOPAArgs, build_model
from llama.build import ModelConfig, load_topa, resolve_dtype
from llama.hf import ffn_args, hf_params
from llama.memory import project_to_memory
from llama.memory import load_memory
from llama.model import ModelArgs
from llama.weights import MetaShards, load_meta_checkpoint
from toyworld.tiny import make_tiny_llama, random_llama_state, write_meta_checkpoint
from util.errors import CheckpointError, ConfigError, MissingFileError

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- a Hugging Face folder, written here

HF_LAYER = {"attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
            "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
            "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
            "feed_forward.w2.weight": "mlp.down_proj.weight", "attention_norm.weight": "input_layernorm.weight",
            "ffn_norm.weight": "post_attention_layernorm.weight"}
HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}


def to_hf_rows(w, n_heads):
    """Meta's rotary row order -> Hugging Face's, as HF's conversion script does: within each head, rows
    (2k, 2k+1) become (k, k + hd/2)."""
    rows, dim = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def hf_config(args: ModelArgs, tie=False, **extra):
    """config.json as the Hub's Llama repositories write it (transformers 4.x)."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "hidden_size": args.dim, "intermediate_size": args.ffn_hidden, "num_hidden_layers": args.n_layers,
           "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads,
           "vocab_size": args.vocab_size, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
           "rope_scaling": None, "max_position_embeddings": 4096, "tie_word_embeddings": tie,
           "torch_dtype": "bfloat16", "attention_bias": False}
    cfg.update(extra)
    return cfg


def write_hf_folder(folder, state, args: ModelArgs, n_files=2, permute=True, tie=False, **config):
    """`state` (Meta keys) as an HF folder: config.json, `n_files` safetensors files and their index."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = {}
    for key, t in state.items():
        if key == "output.weight" and tie:
            continue
        if key in HF_TOP:
            name = HF_TOP[key]
        else:
            _, i, rest = key.split(".", 2)
            name = f"model.layers.{i}.{HF_LAYER[rest]}"
            if permute and rest in ("attention.wq.weight", "attention.wk.weight"):
                t = to_hf_rows(t, args.n_heads if rest == "attention.wq.weight" else args.n_kv_heads)
        hf[name] = t.contiguous().clone()
    names = sorted(hf)
    per = -(-len(names) // n_files)
    weight_map = {}
    for i in range(n_files):
        fname = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        part = {n: hf[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in hf.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(hf_config(args, tie=tie, **config)))
    return folder


FAMILIES = {  # family -> tiny shape (llama2: MHA, as Llama-2 7B/13B; llama3: GQA + rope_theta, as Llama-3 8B)
    "llama2": dict(n_heads=4, n_kv_heads=None, rope_theta=None, ffn_dim_multiplier=None, llama2_style=True),
    "llama3": dict(n_heads=4, n_kv_heads=2, rope_theta=500000.0, ffn_dim_multiplier=1.3, llama2_style=False),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def both_formats(request, fixtures_dir, tmp_path_factory):
    """The same random tiny Llama as a Meta folder (2 shards) and as HF folders in both layouts:
    `meta/tiny/` + `meta/tokenizer.model`; `hf_nested/tiny/` + `hf_nested/tokenizer.model`;
    `hf_direct/` holding the weights and its tokenizer (Llama-2: `tokenizer.model`, Llama-3:
    `original/tokenizer.model`, as the Hub's repositories ship them)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"formats_{family}")
    tok = fixtures_dir / family / "tokenizer.model"
    mdir = make_tiny_llama(root / "meta", tok, dim=64, n_layers=2, n_shards=2, seed=7, multiple_of=32,
                           **FAMILIES[family])
    state = load_meta_checkpoint(mdir)  # bf16, as Meta's
    params = json.loads((mdir / "params.json").read_text())
    args = ModelArgs(**{**params, "vocab_size": state["output.weight"].shape[0]})
    write_hf_folder(root / "hf_nested" / "tiny", state, args)
    (root / "hf_nested" / "tokenizer.model").write_bytes(tok.read_bytes())
    direct = write_hf_folder(root / "hf_direct", state, args)
    tok_in_hf = direct / ("tokenizer.model" if family == "llama2" else "original/tokenizer.model")
    tok_in_hf.parent.mkdir(exist_ok=True)
    tok_in_hf.write_bytes(tok.read_bytes())
    return {"family": family, "root": root, "args": args, "state": state}


def load(path, family, model="tiny", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)  # fresh TOPA tensors: the same in every load
    cfg = ModelConfig(llama_model_path=str(path), model=model, family=family, adapter_len=3, max_feats=4)
    return load_topa(cfg, torch.device("cpu"), dtype)


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if "gate" not in k and k.split(".")[0] not in
            ("adapter_query", "visual_proj", "temporal_emb")}


def video_logits(model, tok):
    """Logits of a prompt with a video slot, gates opened (every TOPA term live)."""
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            if "gate" in n:
                p.copy_(torch.linspace(-1.5, 1.0, p.numel()).view_as(p))
    head = [tok.bos_id] + tok.encode("Instruction: watch.")
    ids = head + [0] * 4 + tok.encode("Question: what is it?")
    tokens = torch.tensor([ids])
    pos = torch.arange(len(ids))[None]
    g = torch.Generator().manual_seed(1)
    video = F.normalize(torch.randn(1, 4, 768, generator=g), dim=-1)
    with torch.no_grad():
        return model.logits(model.hidden(tokens, pos, None, video, torch.tensor([len(head)])))


# ---------------------------------------------------------------- Meta shards, streamed

def test_streamed_load_equals_merged_load_bit_for_bit(tmp_path):
    args = TOPAArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, adapter_len=3,
                    max_feats=4)
    state = random_llama_state(args, seed=3)
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 96, "multiple_of": 32}
    for n_shards in (1, 2):
        folder = write_meta_checkpoint(tmp_path / str(n_shards), params, state, n_shards=n_shards)
        for dtype in (torch.bfloat16, torch.float32):
            streamed = build_model(args, MetaShards(folder), dtype=dtype)
            merged = build_model(args, load_meta_checkpoint(folder), dtype=dtype)
            a, b = backbone_state(streamed), backbone_state(merged)
            assert set(a) == set(b) == set(state)
            for k in state:
                assert a[k].dtype == dtype and a[k].device.type == "cpu", k
                assert torch.equal(a[k].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                                   b[k].view(torch.int16 if dtype == torch.bfloat16 else torch.int32)), k
                assert torch.equal(a[k], state[k].to(torch.bfloat16).to(dtype)), k
            # the model owns its tensors (nothing points into the mmapped shard files)
            assert all(p.untyped_storage().nbytes() == p.nbytes for p in streamed.parameters())


def test_shards_that_do_not_fit_together_are_a_clear_error(tmp_path):
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16)
    state = random_llama_state(args)
    folder = write_meta_checkpoint(tmp_path / "m", {"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 64,
                                                    "multiple_of": 16}, state, n_shards=2)
    s1 = torch.load(folder / "consolidated.01.pth", weights_only=True)
    s1["layers.0.attention.wq.weight"] = torch.zeros(16, 30, dtype=torch.bfloat16)  # dim 1 must be 32
    torch.save(s1, folder / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"shards of 'layers.0.attention.wq.weight' do not fit together: "
                                              r"consolidated.00.pth \[16, 32\], consolidated.01.pth \[16, 30\]"):
        MetaShards(folder)


# ---------------------------------------------------------------- Hugging Face folders

def test_hf_folders_load_the_same_model_as_the_meta_folder(both_formats):
    root, family = both_formats["root"], both_formats["family"]
    meta, tok, _ = load(root / "meta", family)
    ref_state, ref_logits = backbone_state(meta), video_logits(meta, tok)
    for path, model in ((root / "hf_nested", "tiny"), (root / "hf_direct", "ignored-when-the-path-holds-weights")):
        hf, tok_hf, _ = load(path, family, model=model)
        assert tok_hf.n_words == tok.n_words and tok_hf.kind == tok.kind
        # config.json keeps the SwiGLU width, not Meta's (multiple_of, ffn_dim_multiplier) that gave it
        assert hf.args.ffn_hidden == meta.args.ffn_hidden
        same = lambda a: {k: v for k, v in vars(a).items() if k not in ("multiple_of", "ffn_dim_multiplier")}  # noqa: E731
        assert same(hf.args) == same(meta.args)
        state = backbone_state(hf)
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state), path
        assert torch.equal(video_logits(hf, tok_hf), ref_logits), path
    # the row order matters: without HF's rotary permutation the folder is another model
    write_hf_folder(root / "hf_unpermuted", both_formats["state"], both_formats["args"], permute=False)
    (root / "hf_unpermuted" / "tokenizer.model").write_bytes((root / "meta" / "tokenizer.model").read_bytes())
    wrong, _, _ = load(root / "hf_unpermuted", family)
    assert not torch.allclose(video_logits(wrong, tok), ref_logits, atol=1e-3)


def test_hf_folder_gives_transformers_logits(both_formats):
    """The independent oracle: transformers' LlamaForCausalLM reads the same HF folder; at gate1 = 0 and
    without video TOPA is plain Llama, so the logits agree (fp32)."""
    transformers = pytest.importorskip("transformers")
    root, family = both_formats["root"], both_formats["family"]
    ours, tok, _ = load(root / "hf_direct", family)
    ids = torch.tensor([[tok.bos_id] + tok.encode("Question: what is the dog doing in the park?\nAnswer:")])
    pos = torch.arange(ids.shape[1])[None]
    hf = transformers.LlamaForCausalLM.from_pretrained(root / "hf_direct", dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    with torch.no_grad():
        mine = ours.logits(ours.hidden(ids, pos, None))
        theirs = hf(ids).logits
    assert mine.abs().max() > 0.1  # not a degenerate comparison
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4), (mine - theirs).abs().max()


def test_hf_tied_embeddings(tmp_path, both_formats):
    state, args, family = both_formats["state"], both_formats["args"], both_formats["family"]
    tok = both_formats["root"] / "meta" / "tokenizer.model"
    tied = write_hf_folder(tmp_path / "tied", state, args, tie=True)
    (tied / "tokenizer.model").write_bytes(tok.read_bytes())
    model, _, _ = load(tied, family)
    assert model.output.weight is model.tok_embeddings.weight  # one tensor (docs/model.md)
    assert torch.equal(model.output.weight, state["tok_embeddings.weight"].float())
    cfg = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match=r"tied: keys do not match the model: missing \['output.weight'\]"):
        load(tied, family)


def test_config_json_of_the_real_models_gives_meta_params(tmp_path):
    """hf_params on the config.json values of the Hub's Llama repositories == their Meta params.json."""
    llama2_7b = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-05, "rope_scaling": None,
                 "hidden_act": "silu", "tie_word_embeddings": False, "pretraining_tp": 1, "torch_dtype": "float16"}
    llama2_13b = {**llama2_7b, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 40}
    llama3_8b = {**llama2_7b, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256,
                 "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
    meta = {  # Meta's params.json (vocab_size as resolved from the tokenizer)
        "7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, norm_eps=1e-5),
        "13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, multiple_of=256, norm_eps=1e-5),
        "8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0)}
    for name, cfg in (("7b", llama2_7b), ("13b", llama2_13b), ("8b", llama3_8b)):
        assert ModelArgs(**hf_params_of(cfg, tmp_path / name)) == meta[name], name
    # transformers 5 writes rope_theta inside rope_parameters
    v5 = {**llama3_8b, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}
    del v5["rope_theta"]
    assert ModelArgs(**hf_params_of(v5, tmp_path / "v5")).rope_theta == 500000.0
    # widths that no published pair gives still come out exactly
    assert ModelArgs(dim=64, n_heads=4, **dict(zip(("multiple_of", "ffn_dim_multiplier"), ffn_args(64, 100)))).ffn_hidden == 100
    assert ModelArgs(dim=64, n_heads=4, **dict(zip(("multiple_of", "ffn_dim_multiplier"), ffn_args(64, 224)))).ffn_hidden == 224


def hf_params_of(cfg, folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return hf_params(folder)


# ---------------------------------------------------------------- what is refused, with what message

def _meta_and_hf(tmp_path, both_formats):
    """tmp_path/<name>/ copies to break: a Meta folder (tiny/ + tokenizer.model) and an HF folder."""
    import shutil
    src = both_formats["root"]
    shutil.copytree(src / "meta", tmp_path / "meta")
    shutil.copytree(src / "hf_direct", tmp_path / "hf")
    return tmp_path / "meta", tmp_path / "hf"


def test_bad_folders_are_clear_errors(tmp_path, both_formats):
    family = both_formats["family"]
    meta, hf = _meta_and_hf(tmp_path, both_formats)
    # both formats in one folder
    (meta / "tiny" / "model.safetensors").write_bytes((hf / "model-00001-of-00002.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"meta/tiny holds both Meta shards and Hugging Face files "
                                              r"\(consolidated.00.pth, consolidated.01.pth, model.safetensors\)"):
        load(meta, family)
    (meta / "tiny" / "model.safetensors").unlink()
    # no model folder, or one with no weights
    with pytest.raises(MissingFileError, match=r"no model folder .*meta/13B \(--llama_model_path .*meta --model 13B\); "
                                               r".*meta holds: tiny/, tokenizer.model"):
        load(meta, family, model="13B")
    (meta / "empty").mkdir()
    (meta / "empty" / "README.md").write_text("weights go here")
    with pytest.raises(CheckpointError, match=r"meta/empty holds no Llama weights .* it holds: README.md"):
        load(meta, family, model="empty")
    # not Llama, or Llama with math we do not implement
    cfg = json.loads((hf / "config.json").read_text())
    for extra, msg in (({"model_type": "mistral"}, r"config.json: model_type is 'mistral', not 'llama'"),
                       ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling.rope_type 'yarn' is not "
                                                                                  r"supported"),
                       ({"attention_bias": True}, r"attention_bias=true"),
                       ({"intermediate_size": cfg["intermediate_size"] + 32},
                        r"hf: tensor 'layers.0.feed_forward.w1.weight' has shape \(\d+, 64\), the model needs")):
        (hf / "config.json").write_text(json.dumps({**cfg, **extra}))
        with pytest.raises(CheckpointError, match=msg):
            load(hf, family)
    (hf / "config.json").write_text(json.dumps(cfg))
    # a tensor that is not Llama's, a file the index lists but that is missing
    from safetensors.torch import save_file
    save_file({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, str(hf / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"extra.safetensors: tensor 'model.layers.0.self_attn.q_norm.weight' "
                                              r"is not part of a Llama model"):
        load(hf, family)
    (hf / "extra.safetensors").unlink()
    (hf / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"index.json lists model-00002-of-00002.safetensors, not in .*hf"):
        load(hf, family)
    for f in hf.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match=r"hf holds config.json but no \*.safetensors"):
        load(hf, family)


def test_hf_folder_without_tokenizer_is_a_clear_error(tmp_path, both_formats):
    _, hf = _meta_and_hf(tmp_path, both_formats)
    for f in list(hf.glob("tokenizer.model")) + list(hf.glob("original/tokenizer.model")):
        f.unlink()
    (hf / "tokenizer.json").write_text("{}")
    with pytest.raises(MissingFileError, match=r"no tokenizer for the Hugging Face folder .*hf: tried .*hf/tokenizer.model, "
                                               r".*hf/original/tokenizer.model \(tokenizer.json is not read"):
        load(hf, both_formats["family"])


# ---------------------------------------------------------------- memory bank, bf16

def test_memory_bank_is_stored_fp16_and_projected_in_fp32(tmp_path):
    torch.manual_seed(0)
    M32 = F.normalize(torch.randn(5000, 768, dtype=torch.float64), dim=-1).float()  # unit-norm text features
    torch.save(M32, tmp_path / "memory.pkl")
    mem = load_memory(tmp_path / "memory.pkl", max_rows=4000)
    assert mem.dtype == torch.float16 and mem.shape == (4000, 768)
    assert mem.untyped_storage().nbytes() == 4000 * 768 * 2  # its own rows only, not the whole file
    assert torch.equal(mem, M32[:4000].half())
    torch.save(M32.half(), tmp_path / "memory16.pkl")  # an fp16 file longer than max_rows: its rows only too
    mem16 = load_memory(tmp_path / "memory16.pkl", max_rows=4000)
    assert torch.equal(mem16, mem) and mem16.untyped_storage().nbytes() == 4000 * 768 * 2

    v = torch.cat([F.normalize(torch.randn(3, 9, 768), dim=-1), torch.zeros(3, 1, 768)], 1)  # zero rows too
    out = project_to_memory(v, mem, chunk=1024)
    # the math is fp32: the fp16 bank gives exactly the fp32 computation on the same (rounded) rows
    assert torch.equal(out, project_to_memory(v, mem.float(), chunk=1024))
    # and it differs from the unrounded fp32 bank by no more than fp16 rounding can move it. Rounding
    # moves each element by <= 2^-11 of itself (unit roundoff; |x| < 2^-14: by <= 2^-25): that is `e`.
    # First order, per frame v: the logits 100 v.m_i move by delta_i, |delta_i| <= d = max_i |100 v.e_i|;
    # the weighted mean r = sum p_i m_i moves by sum p_i (delta_i - mean delta)(m_i - r) + sum p_i e_i,
    # at most 2d sqrt(1 - |r|^2) + max|e_i| (Cauchy-Schwarz, unit rows); normalising at most doubles
    # that relative to |r|.
    M, Mr = M32[:4000].double(), mem.double()
    e = Mr - M
    assert torch.all(e.abs() <= torch.maximum(M.abs() * 2.0 ** -11, torch.full_like(M, 2.0 ** -25)))
    vd = v.double().reshape(-1, 768)
    d = (100 * vd @ e.T).abs().max(dim=-1).values  # per frame
    r = torch.softmax(100 * vd @ M.T, -1) @ M
    rn = r.norm(dim=-1)
    bound = 2 * (2 * d * (1 - rn ** 2).sqrt() + e.norm(dim=-1).max()) / rn + 1e-5  # + fp32 arithmetic
    diff = (out.reshape(-1, 768) - F.normalize(r, dim=-1).float()).norm(dim=-1)
    assert torch.all(diff <= bound), (diff, bound)
    assert bound.max() < 0.1  # a tolerance that still means something (measured: diff <= 1e-3)


def test_bf16_on_a_gpu_without_bf16_is_a_clear_error(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ConfigError, match=r"Tesla V100-SXM2-32GB \(cuda:0\) has no native bf16 support: "
                                          r"use --precision fp16"):
        resolve_dtype("bf16", cuda)
    with pytest.raises(ConfigError, match=r"\(bf16 is the default on GPU\): use --precision fp16"):
        resolve_dtype(None, cuda)
    assert resolve_dtype("fp16", cuda) == torch.float16 and resolve_dtype("fp32", cuda) == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # A100
    assert resolve_dtype(None, cuda) == resolve_dtype("bf16", cuda) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_fresh_topa_tensors_keep_torch_default_init():
    """Building skips every random initialisation that loading overwrites, but TOPA's own fresh tensors
    are exactly what torch's default init gave them before (same seed, same order): adapter_query and
    temporal_emb ~ N(0, 1) (nn.Embedding), visual_proj kaiming-uniform (nn.Linear), gate1 = 0,
    gate2 = -bias. Holds on the old code path too: the meta-device init it skipped drew no CPU random
    numbers."""
    args = TOPAArgs(dim=64, n_layers=3, n_heads=4, vocab_size=97, multiple_of=16, adapter_len=5,
                    adapter_layer=2, max_feats=4, bias=2.5)
    state = random_llama_state(args)
    torch.manual_seed(1234)
    model = build_model(args, state)
    torch.manual_seed(1234)  # the old construction, on the CPU: torch's defaults for these modules
    ref = {"adapter_query.weight": torch.nn.Embedding(args.adapter_len * args.adapter_layer, args.dim).weight,
           "visual_proj.weight": torch.nn.Linear(args.clip_dim, args.dim, bias=False).weight,
           "temporal_emb.weight": torch.nn.Embedding(args.max_feats, args.dim).weight}
    got = model.trainable_state_dict()
    for k, v in ref.items():
        assert torch.equal(got[k], v.detach()), k
    for i in (1, 2):
        assert torch.equal(got[f"layers.{i}.attention.gate1"], torch.zeros(1, 4, 1, 1))
        assert torch.equal(got[f"layers.{i}.attention.gate2"], torch.full((1, 4, 1, 1), -2.5))


def test_building_the_model_does_no_meta_device_random_init():
    """A fresh process that builds a model never runs `normal_` on the meta device, whose first call
    imports torch's decompositions (torch._dynamo: 1.5-3 s of every eval, test and demo process).
    On the old code path (`with torch.device("meta")` without `skip_init`) torch._dynamo is imported."""
    code = ("import sys, torch\n"
            "from llama.adapter import TOPAArgs, build_model\n"
            "from toyworld.tiny import random_llama_state\n"
            "args = TOPAArgs(dim=32, n_layers=2, n_heads=4, vocab_size=50, multiple_of=16, adapter_len=3, max_feats=2)\n"
            "assert 'torch._dynamo' not in sys.modules\n"
            "build_model(args, random_llama_state(args))\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
