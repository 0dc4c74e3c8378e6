"""Model math on tiny random models (fp32 CPU): Meta-equivalent decoder, TOPA adapter semantics,
shared-prefix scoring == full scoring, key sets, safe loading, bad-input errors."""
import argparse
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from dataloader.base import EvalItem, fit_frames, fuse_text_frames
from dataloader.packing import ScoringCollate, collate_rows, pack_options, single_row
from engine.losses import group_mean, token_nll
from llama.adapter import TOPAArgs, build_model, load_trainable
from llama.memory import project_to_memory
from llama.memory import load_memory
from llama.model import ModelArgs, Transformer, causal_mask
from llama.weights import load_topa_checkpoint
from text.prompts import PromptBuilder
from text.tokenizer import load_tokenizer
from toyworld.fixtures import fixtures_dir
from util.errors import CheckpointError, DataError, MissingFileError, TokenizerError
from util.files import load_pickled_tensor, save_atomic

FIX = fixtures_dir()  # tests/fixtures, or $TOPA_FIXTURES


def tiny_args(vocab=300, **kw):
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, multiple_of=16,
                adapter_len=3, max_feats=4, bias=3.5)
    base.update(kw)
    return TOPAArgs(**base)


def tiny_topa(args, seed=0, random_gates=True):
    torch.manual_seed(seed)
    model = build_model(args, Transformer(args).state_dict())
    if random_gates:
        with torch.no_grad():
            for n, p in model.trainable_parameters():
                if "gate" in n:
                    p.normal_()
    return model.eval()


# ---------------------------------------------------------------- decoder vs Meta's formulation

def meta_reference_logits(model: Transformer, tokens):
    """Meta's llama/model.py math written independently: complex RoPE, GQA by repeat, fp32."""
    a = model.args
    B, L = tokens.shape
    hd = a.head_dim
    freqs = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    cis = torch.polar(torch.ones(L, hd // 2), torch.outer(torch.arange(L).float(), freqs))

    def rope(x):  # [B, L, H, hd]
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * cis[None, :, None]).flatten(3)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + a.norm_eps) * w

    h = model.tok_embeddings.weight[tokens]
    mask = torch.full((L, L), float("-inf")).triu(1)
    for layer in model.layers:
        at = layer.attention
        x = rms(h, layer.attention_norm.weight)
        q = rope((x @ at.wq.weight.T).view(B, L, a.n_heads, hd))
        k = rope((x @ at.wk.weight.T).view(B, L, a.n_kv_heads, hd))
        v = (x @ at.wv.weight.T).view(B, L, a.n_kv_heads, hd)
        rep = a.n_heads // a.n_kv_heads
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        s = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(hd) + mask
        o = torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v).reshape(B, L, -1)
        h = h + o @ at.wo.weight.T
        x = rms(h, layer.ffn_norm.weight)
        ff = layer.feed_forward
        h = h + (F.silu(x @ ff.w1.weight.T) * (x @ ff.w3.weight.T)) @ ff.w2.weight.T
    return rms(h, model.norm.weight) @ model.output.weight.T


@pytest.mark.parametrize("kw", [dict(n_kv_heads=4), dict(n_kv_heads=2, rope_theta=500000.0, ffn_dim_multiplier=1.3)])
def test_decoder_matches_meta_math(kw):
    torch.manual_seed(0)
    m = Transformer(tiny_args(**kw)).eval()
    tokens = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        assert torch.allclose(m(tokens), meta_reference_logits(m, tokens), atol=1e-5)


def test_ffn_hidden_sizes_match_meta():
    assert ModelArgs(dim=4096, multiple_of=256).ffn_hidden == 11008              # Llama-2 7B
    assert ModelArgs(dim=5120, n_heads=40, multiple_of=256).ffn_hidden == 13824  # Llama-2 13B
    assert ModelArgs(dim=4096, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3).ffn_hidden == 14336  # Llama-3 8B


def test_gate1_zero_without_video_equals_plain_llama():
    args = tiny_args()
    torch.manual_seed(0)
    base = Transformer(args).eval()
    model = build_model(args, base.state_dict()).eval()
    with torch.no_grad():
        for layer in model.layers:  # gate2 may be anything: it only acts on a video slot
            layer.attention.gate2.normal_()
    tokens = torch.randint(0, 300, (3, 21))
    pos = torch.arange(21).expand(3, 21)
    with torch.no_grad():
        out = model.logits(model.hidden(tokens, pos, causal_mask(pos)))
        assert torch.equal(out, base(tokens))
        # and the gates do act once open
        model.layers[0].attention.gate1.fill_(1.0)
        assert not torch.allclose(model.logits(model.hidden(tokens, pos, causal_mask(pos))), out)


def test_adapter_attention_follows_spec_formula():
    """One adapted layer recomputed from docs/model.md by hand, with a video slot and gate2."""
    args = tiny_args(n_layers=1, n_kv_heads=4)
    model = tiny_topa(args)
    B, L, T, s = 2, 12, args.max_feats, 3
    tokens = torch.randint(0, 300, (B, L))
    pos = torch.arange(L).expand(B, L)
    video = torch.randn(B, T, 768)
    vs = torch.tensor([s, s])
    with torch.no_grad():
        h_model = model.hidden(tokens, pos, causal_mask(pos), video, vs)
        # by hand
        x = model.tok_embeddings(tokens).clone()
        x[:, s:s + T] = model.visual_proj(video) + model.temporal_emb.weight
        layer = model.layers[0]
        at = layer.attention
        from llama.model import apply_rope, rope_angles
        cos, sin = rope_angles(pos, args.head_dim, args.rope_theta)
        xn = layer.attention_norm(x)
        hd, H = args.head_dim, args.n_heads
        q = apply_rope(at.wq(xn).view(B, L, H, hd).transpose(1, 2), cos, sin)
        k = apply_rope(at.wk(xn).view(B, L, H, hd).transpose(1, 2), cos, sin)
        v = at.wv(xn).view(B, L, H, hd).transpose(1, 2)
        S = q @ k.transpose(-1, -2) / math.sqrt(hd) + torch.full((L, L), float("-inf")).triu(1)
        S[:, :, s + T:, s:s + T] += at.gate2
        P = model.adapter_query.weight
        ka = at.wk(P).view(-1, H, hd).transpose(0, 1)
        va = at.wv(P).view(-1, H, hd).transpose(0, 1)
        out = S.softmax(-1) @ v + torch.tanh(at.gate1) * (q @ ka.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ va
        h = x + at.wo(out.transpose(1, 2).reshape(B, L, -1))
        h = h + layer.feed_forward(layer.ffn_norm(h))
        assert torch.allclose(model.norm(h), h_model, atol=1e-5)


def test_adapters_sit_on_the_last_layers_and_every_layer_runs():
    args = tiny_args(n_layers=3, adapter_layer=2)
    model = tiny_topa(args)
    from llama.adapter import AdapterAttention
    assert [isinstance(l.attention, AdapterAttention) for l in model.layers] == [False, True, True]
    assert model.adapter_query.weight.shape == (2 * args.adapter_len, args.dim)
    # block 0 of adapter_query belongs to layer 1 (the first of the last two)
    tokens = torch.randint(0, 300, (1, 9))
    pos = torch.arange(9)[None]
    with torch.no_grad():
        ref = model.logits(model.hidden(tokens, pos, causal_mask(pos)))
        model.adapter_query.weight[args.adapter_len:].normal_()  # layer 2's block
        changed = model.logits(model.hidden(tokens, pos, causal_mask(pos)))
    assert not torch.allclose(ref, changed)
    # layer 0 is plain: perturbing its would-be block changes nothing because there is none
    assert not hasattr(model.layers[0].attention, "gate1")


# ---------------------------------------------------------------- trainable key set / saving

def test_trainable_key_set_is_spec_1_2():
    args = tiny_args()
    model = tiny_topa(args)
    keys = set(model.trainable_state_dict())
    expected = {"adapter_query.weight", "visual_proj.weight", "temporal_emb.weight"}
    expected |= {f"layers.{i}.attention.gate{g}" for i in range(args.n_layers) for g in (1, 2)}
    assert keys == expected
    sd = model.trainable_state_dict()
    assert sd["adapter_query.weight"].shape == (args.adapter_len * args.n_layers, args.dim)
    assert sd["visual_proj.weight"].shape == (args.dim, 768)
    assert sd["temporal_emb.weight"].shape == (args.max_feats, args.dim)
    assert sd["layers.0.attention.gate1"].shape == (1, args.n_heads, 1, 1)
    assert all(p.dtype == torch.float32 for p in sd.values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_fresh_init_zero_gate1_and_gate2_minus_bias():
    """Fresh TOPA tensors as docs/model.md's parameter table states: gate1 = 0, gate2 = -bias."""
    model = tiny_topa(tiny_args(bias=3.5), random_gates=False)
    for l in model.layers:
        assert torch.all(l.attention.gate1 == 0) and torch.all(l.attention.gate2 == -3.5)


def test_checkpoint_roundtrip_safe_and_exact(tmp_path):
    args = tiny_args()
    model = tiny_topa(args)
    path = tmp_path / "checkpoint_00.pth"
    ns = argparse.Namespace(model="tiny", blr=5e-3)
    save_atomic({"model": model.trainable_state_dict(), "optimizer": {"state": {}, "param_groups": []},
                 "epoch": 0, "scaler": {}, "args": ns}, path)
    ck = load_topa_checkpoint(path)
    assert ck["args"].blr == 5e-3
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as a plain open() makes it, not mkstemp's 0600
    other = tiny_topa(args, seed=1)
    load_trainable(other, ck["model"])
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(other.trainable_state_dict()[k], v)


def test_checkpoint_with_wrong_shape_or_keys_is_a_clear_error():
    model = tiny_topa(tiny_args())
    sd = dict(model.trainable_state_dict())
    sd["visual_proj.weight"] = torch.zeros(64, 512)
    with pytest.raises(CheckpointError, match=r"visual_proj.weight.*\(64, 512\).*\(64, 768\)"):
        load_trainable(model, sd, "ckpt.pth")
    sd = dict(model.trainable_state_dict())
    del sd["layers.1.attention.gate2"]
    with pytest.raises(CheckpointError, match=r"ckpt.pth.*missing.*layers.1.attention.gate2"):
        load_trainable(model, sd, "ckpt.pth")


def test_backbone_with_wrong_shape_is_a_clear_error():
    args = tiny_args()
    sd = Transformer(args).state_dict()
    sd["layers.0.attention.wk.weight"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointError, match=r"layers.0.attention.wk.weight.*\(64, 64\).*\(32, 64\)"):
        build_model(args, sd, source="pretrained/x")


class _Evil:
    """Unpickling this runs open(marker, "w"): the file `marker` appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_refuses_arbitrary_pickles(tmp_path):
    ran = tmp_path / "payload_ran"
    pickle.loads(pickle.dumps(_Evil(ran))).close()  # a plain unpickler runs the payload
    assert ran.exists()
    ran.unlink()
    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Evil(ran)}, bad)
    with pytest.raises(pickle.UnpicklingError, match="evil.pth"):
        load_topa_checkpoint(bad)
    hidden = tmp_path / "evil_args.pth"  # inside the one class a checkpoint may hold
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "scaler": None,
                "args": argparse.Namespace(model="7B", x=_Evil(ran))}, hidden)
    with pytest.raises(pickle.UnpicklingError, match="evil_args.pth"):
        load_topa_checkpoint(hidden)
    bad_pkl = tmp_path / "memory.pkl"
    with open(bad_pkl, "wb") as f:
        pickle.dump(_Evil(ran), f)
    with pytest.raises(pickle.UnpicklingError, match="memory.pkl"):
        load_pickled_tensor(bad_pkl)
    assert not ran.exists()  # refused before the payload ran


def test_pickled_tensors_both_formats(tmp_path):
    t = F.normalize(torch.randn(20, 768), dim=-1).half()
    torch.save(t, tmp_path / "a.pkl")
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump(t, f)
    for name in ("a.pkl", "b.pkl"):
        m = load_memory(tmp_path / name)
        assert m.dtype == torch.float16 and torch.equal(m, t)  # stored fp16 (the math upcasts per chunk)
    torch.save(torch.randn(5, 512), tmp_path / "narrow.pkl")
    with pytest.raises(DataError, match=r"narrow.pkl.*\[N, 768\].*\[5, 512\]"):
        load_memory(tmp_path / "narrow.pkl")


def test_wrong_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="nope/tokenizer.model"):
        load_tokenizer(tmp_path / "nope" / "tokenizer.model")
    junk = tmp_path / "tokenizer.model"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(junk)


# ---------------------------------------------------------------- features

def test_fit_frames_sampling_and_padding():
    x = torch.arange(1, 26).float()[:, None] * torch.ones(25, 768)
    out = fit_frames(x, 10)
    # rows floor(j*25/10) = 0,2,5,7,10,12,15,17,20,22; all rows identical after normalising, so
    # check via a feature whose direction encodes the index
    x = torch.zeros(25, 768)
    x[torch.arange(25), torch.arange(25)] = 1.0
    out = fit_frames(x, 10)
    assert out.argmax(-1).tolist() == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    short = fit_frames(torch.randn(3, 768) * 5, 10)
    assert torch.allclose(short[:3].norm(dim=-1), torch.ones(3)) and torch.all(short[3:] == 0)


def test_fuse_text_frames():
    rows = torch.randn(5, 768)
    out = fuse_text_frames(rows, [2, 3])
    f0 = F.normalize(F.normalize(rows[:2], dim=-1).mean(0), dim=0)
    assert torch.allclose(out[0], f0, atol=1e-6) and out.shape == (2, 768)


def test_memory_projection_matches_formula_and_chunks():
    torch.manual_seed(0)
    M = F.normalize(torch.randn(1000, 768), dim=-1)
    v = torch.cat([F.normalize(torch.randn(2, 3, 768), dim=-1), torch.zeros(2, 1, 768)], 1)  # zero rows too
    ref = F.normalize(torch.softmax(100 * v @ M.T, -1) @ M, dim=-1)
    out = project_to_memory(v, M, chunk=64)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out[:, 3], F.normalize(M.mean(0), dim=0).expand(2, 768), atol=1e-5)


# ---------------------------------------------------------------- scoring

def option_items(builder, T, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [("how do the two man play the instrument",
           ["roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"]),
          ("why did the boy pick up one present from the group of them and move to the sofa",
           ["share with the girl", "approach lady sitting there", "unwrap it", "playing with toy train",
            "gesture something"]),
          ("what is c doing", ["A", "B b", "C c c", "D", "E e"])]
    return [EvalItem(i, None, fit_frames(torch.randn(5 + 7 * i, 768, generator=g), T), builder.mcqa_options(q, o))
            for i, (q, o) in enumerate(qs[:n])]


@pytest.mark.parametrize("kind", ["llama2", "llama3"])
def test_shared_prefix_scores_equal_full_scores(kind):
    tok = load_tokenizer(os.path.join(FIX, kind, "tokenizer.model"))
    args = tiny_args(vocab=tok.n_words, max_feats=10, n_kv_heads=2 if kind == "llama3" else 4)
    model = tiny_topa(args)
    items = option_items(PromptBuilder(tok, 10), 10)
    scores = {}
    with torch.no_grad():
        for mode in ("packed", "full"):
            b = ScoringCollate(mode)(items)
            scores[mode] = group_mean(token_nll(model, b, b.video), b.t_group, b.n_groups)
            if mode == "packed":
                assert b.tokens.shape[0] == len(items)
    assert torch.allclose(scores["packed"], scores["full"], atol=1e-5, rtol=0)
    # and each full score is the per-option computation with one sequence alone, unpadded
    it = items[2]
    for k, seq in enumerate(it.seqs):
        b = collate_rows([single_row(seq)], [it.video])
        with torch.no_grad():
            alone = token_nll(model, b, b.video).mean()
        assert abs(alone.item() - scores["full"][2 * 5 + k].item()) < 1e-5


def test_packed_row_layout():
    tok = load_tokenizer(os.path.join(FIX, "llama2", "tokenizer.model"))
    seqs = PromptBuilder(tok, 10).mcqa_options("what is it", ["x", "y", "z", "w", "v"])
    row = pack_options(seqs)
    P = row.segments.count(0)
    assert all(s.tokens[:P] == seqs[0].tokens[:P] for s in seqs)
    assert len(row) == P + sum(len(s) - P for s in seqs)
    # each tail continues the prefix positions
    for k in range(1, 6):
        pos = [p for p, sg in zip(row.positions, row.segments) if sg == k]
        assert pos == list(range(P, P + len(pos)))


def test_adapter_len_mismatch_names_the_trained_length():
    model = tiny_topa(tiny_args(adapter_len=3))
    sd = dict(model.trainable_state_dict())
    sd["adapter_query.weight"] = torch.zeros(5 * 2, 64)
    with pytest.raises(CheckpointError, match=r"topa.pth.*adapter_query.weight.*--adapter_len 5"):
        load_trainable(model, sd, "topa.pth")
