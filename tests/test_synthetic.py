"""toyworld/tiny.py and toyworld/synthetic.py: Meta-format writing (shards merge bitwise), the self-trained
tokenizer (Llama-2 ids and prompt spans), and the synthetic world's files, shapes and determinism."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llama.adapter import TOPAArgs, build_model
from llama.memory import project_to_memory
from llama.memory import load_memory
from llama.model import ModelArgs, Transformer, causal_mask
from llama.weights import load_meta_checkpoint
from text.prompts import LETTERS, PromptBuilder
from text.tokenizer import load_tokenizer
from toyworld import synthetic as S
from toyworld.tiny import make_tiny_llama, random_llama_state, train_sentencepiece, write_meta_checkpoint
from util.files import load_pickled_tensor, safe_load

NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                 "a0", "a1", "a2", "a3", "a4"]
EGOS_HEADER = ["uid", "question", "a0", "a1", "a2", "a3", "a4", "answer"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("tok") / "tokenizer.model",
                               ["a dog is running in the park", "two cats are sleeping"], vocab_size=600)


# ---------------------------------------------------------------- Meta checkpoints

def test_shard_dims_are_meta_model_parallel_layout():
    """Meta's model-parallel layout (the writer and the loader share this table, so it is pinned here):
    tok_embeddings split on dim 1; output, wq, wk, wv, w1, w3 on dim 0; wo, w2 on dim 1; norms replicated."""
    from llama.weights import shard_dim
    want = {"tok_embeddings.weight": 1, "output.weight": 0, "norm.weight": None, "rope.freqs": None,
            "layers.7.attention.wq.weight": 0, "layers.7.attention.wk.weight": 0, "layers.7.attention.wv.weight": 0,
            "layers.7.attention.wo.weight": 1, "layers.7.feed_forward.w1.weight": 0,
            "layers.7.feed_forward.w3.weight": 0, "layers.7.feed_forward.w2.weight": 1,
            "layers.7.attention_norm.weight": None, "layers.7.ffn_norm.weight": None}
    assert {k: shard_dim(k) for k in want} == want
    with pytest.raises(ValueError, match="unknown tensor 'layers.0.attention.bq.weight'"):
        shard_dim("layers.0.attention.bq.weight")


def test_two_shards_merge_to_the_unsharded_state_bitwise(tmp_path, tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words, multiple_of=32)
    state = random_llama_state(args, seed=3)
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1, "multiple_of": 32,
              "norm_eps": 1e-5}
    write_meta_checkpoint(tmp_path / "one", params, state, n_shards=1)
    write_meta_checkpoint(tmp_path / "two", params, state, n_shards=2)
    one, two = load_meta_checkpoint(tmp_path / "one"), load_meta_checkpoint(tmp_path / "two")
    assert set(one) == set(two) == set(state)
    for k in state:
        assert one[k].dtype == two[k].dtype == torch.bfloat16, k
        assert torch.equal(one[k], state[k].to(torch.bfloat16)), k
        assert torch.equal(one[k].view(torch.int16), two[k].view(torch.int16)), k  # bitwise
    # the shards are real model-parallel slices, each holding only its own data
    s0 = safe_load(tmp_path / "two" / "consolidated.00.pth")
    D, V, H = 64, tok.n_words, args.ffn_hidden
    expect = {"tok_embeddings.weight": (V, D // 2), "output.weight": (V // 2, D), "norm.weight": (D,),
              "layers.0.attention.wq.weight": (D // 2, D), "layers.0.attention.wk.weight": (16, D),
              "layers.0.attention.wo.weight": (D, D // 2), "layers.1.feed_forward.w1.weight": (H // 2, D),
              "layers.1.feed_forward.w2.weight": (D, H // 2), "layers.1.feed_forward.w3.weight": (H // 2, D),
              "layers.1.attention_norm.weight": (D,), "layers.1.ffn_norm.weight": (D,)}
    for k, shape in expect.items():
        assert tuple(s0[k].shape) == shape, k
        assert s0[k].untyped_storage().nbytes() == s0[k].numel() * 2, k
    assert json.loads((tmp_path / "two" / "params.json").read_text()) == params


def test_make_tiny_llama_loads_into_topa(tmp_path, tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    mdir = make_tiny_llama(tmp_path / "llama2", tokenizer_path, dim=64, n_layers=2, n_heads=4, n_shards=2, seed=1)
    assert mdir == tmp_path / "llama2" / "tiny"
    assert sorted(p.name for p in mdir.iterdir()) == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    assert (tmp_path / "llama2" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    params = json.loads((mdir / "params.json").read_text())
    assert params["vocab_size"] == -1 and "rope_theta" not in params
    assert "rope.freqs" in safe_load(mdir / "consolidated.01.pth")  # like Meta's Llama-2 shards
    args = TOPAArgs.from_params_json(mdir / "params.json", vocab_size=tok.n_words)
    merged = load_meta_checkpoint(mdir)
    model = build_model(args, merged)
    # at gate1 = 0 and without video, TOPA is the plain Llama built from the unsharded weights
    plain = Transformer(args)
    plain.load_state_dict({k: v.float() for k, v in merged.items()})
    ids = torch.tensor([[tok.bos_id] + tok.encode("Question: what is in the park?")])
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        h = model.hidden(ids, pos, causal_mask(pos))
        assert torch.allclose(model.logits(h), plain(ids), atol=1e-5)
    # Llama-3 style: real vocab size in params.json, rope_theta kept, GQA
    mdir3 = make_tiny_llama(tmp_path / "llama3", tokenizer_path, n_kv_heads=2, rope_theta=500000.0,
                            ffn_dim_multiplier=1.3, llama2_style=False)
    p3 = json.loads((mdir3 / "params.json").read_text())
    assert p3["vocab_size"] == tok.n_words and p3["rope_theta"] == 500000.0 and p3["n_kv_heads"] == 2
    a3 = TOPAArgs.from_params_json(mdir3 / "params.json")
    merged3 = load_meta_checkpoint(mdir3)
    plain3 = Transformer(a3)
    plain3.load_state_dict({k: v.float() for k, v in merged3.items()})
    with torch.no_grad():
        m3 = build_model(a3, merged3)
        assert m3.args.rope_theta == 500000.0 and m3.args.n_kv_heads == 2
        assert torch.allclose(m3.logits(m3.hidden(ids, pos, causal_mask(pos))), plain3(ids), atol=1e-5)


def test_random_llama_state_is_deterministic():
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=50, multiple_of=16)
    a, b, c = random_llama_state(args, 0), random_llama_state(args, 0), random_llama_state(args, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["output.weight"], c["output.weight"])
    assert set(a) == set(Transformer(args).state_dict())


# ---------------------------------------------------------------- tokenizer

def test_self_trained_tokenizer_is_llama2_style(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    assert tok.kind == "sentencepiece"
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sp.unk_id()) == (1, 2, -1, 0)
    assert tok.n_words % 8 == 0 and tok.n_words <= 600
    assert tok.sep_id == tok.sp.piece_to_id("<0x0A>") != tok.sp.unk_id()
    for word in ("Answer", "Question", "Description"):
        nl = tok.newline_form(word)
        assert tok.sp.id_to_piece(nl) == word
        start = tok.encode(f"{word}: x")[0]  # segment-start form is a different piece, as in Llama-2
        assert tok.sp.id_to_piece(start) == "\u2581" + word and start != nl
    assert tok.encode("\n") == [tok.sp.piece_to_id("\u2581"), tok.sep_id]
    assert tok.decode(tok.encode("zebra \u00e9t\u00e9 42")) == "zebra \u00e9t\u00e9 42"  # byte fallback
    with pytest.raises(ValueError, match="too small"):
        train_sentencepiece(tokenizer_path.parent / "small.model", ["x"], vocab_size=100)


def test_prompt_builder_spans_match_llama2(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    pb = PromptBuilder(tok, max_feats=10)
    opts = ["dog", "cat", "bird", "cow", "boy"]
    for k in range(5):
        s = pb.mcqa("what is in the video", opts, k)
        # Llama-2: the span starts 4 tokens after "\nAnswer": "choice is (X)" + EOS
        assert tok.decode(s.tokens[s.span_start:-1]) == f"choice is ({LETTERS[k]})"
        assert s.tokens[-1] == tok.eos_id and s.tokens[s.video_start + 10] == tok.sep_id
    cap = pb.caption("two dogs are running")
    assert tok.decode(cap.tokens[cap.span_start:-1]) == ": two dogs are running\n"
    vaq = pb.vaq("what is in the video", opts, 2)
    assert tok.decode(vaq.tokens[vaq.span_start:-1]) == ": What is in the video?"
    oq = pb.openqa("what is in the video", "the dog")
    assert tok.decode(oq.tokens[oq.span_start:-1]) == ": the dog\n"


def test_train_sentencepiece_is_deterministic(tmp_path):
    a = train_sentencepiece(tmp_path / "a.model", ["one two three", "four five"], vocab_size=500)
    b = train_sentencepiece(tmp_path / "b.model", ["one two three", "four five"], vocab_size=500)
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- the synthetic world

def _unit_rows(x, tol=2e-3):
    n = x.float().norm(dim=-1)
    return bool(torch.all((n - 1).abs() < tol))


def test_world_writes_every_file_with_documented_shapes(tiny_world):
    w = tiny_world
    root = w["root"]
    assert json.loads((root / "synthetic_world.json").read_text())["n_textvid"] == 24
    # model + tokenizer (the documented layout: llama_model_path + model name)
    tok = load_tokenizer(w["tokenizer"])
    assert w["model_dir"] == w["llama_model_path"] / "tiny" == root / "pretrained" / "llama2" / "tiny"
    args = TOPAArgs.from_params_json(w["model_dir"] / "params.json", vocab_size=tok.n_words)
    assert args.dim == 64 and args.n_layers == 2
    weights = load_meta_checkpoint(w["model_dir"])
    backbone = {k: v for k, v in build_model(args, weights).state_dict().items() if k in weights}
    assert backbone.keys() == weights.keys() and all(torch.equal(backbone[k], weights[k].float()) for k in weights)
    pb = PromptBuilder(tok)
    # TextVid
    tideos = json.loads(w["textvid_json"].read_text())
    assert len(tideos) == 24
    total_rows = 0
    for t in tideos:
        assert set(t) == {"idx", "frames", "QAs", "global_video_caption"}
        feats = load_pickled_tensor(w["textvid_features"] / f"{t['idx']}.pkl")
        n_entries = sum(len(fr) for fr in t["frames"])
        assert feats.shape == (n_entries, 768) and _unit_rows(feats)
        assert all("caption" in fr and 1 <= len(fr) <= 3 for fr in t["frames"])
        assert 6 <= len(t["frames"]) <= 16
        total_rows += n_entries
        for qa in t["QAs"]:
            assert len(qa["options"]) == 5 and len(set(qa["options"])) == 5
            assert qa["answer"] in LETTERS and qa["question"].endswith("?")
            correct = qa["options"][LETTERS.index(qa["answer"])].lower()
            assert not any(word in correct for word in ("and", "all", "both", "none"))
            k = LETTERS.index(qa["answer"])
            s = pb.mcqa(qa["question"], qa["options"], k)   # the answer span reads the answer's letter
            assert tok.decode(s.tokens[s.span_start:-1]) == f"choice is ({qa['answer']})"
        cap = pb.caption(t["global_video_caption"])
        assert tok.decode(cap.tokens[cap.span_start:-1]) == f": {t['global_video_caption']}\n"
    assert total_rows == w["n_textvid_rows"]
    mem = load_memory(w["memory"])
    assert mem.shape == (total_rows + len(S.World.all_frame_concepts()), 768) and _unit_rows(mem)
    assert w["n_memory"] == mem.shape[0]
    # NExT-QA
    with open(w["nextqa_val"], newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == NEXTQA_HEADER
        rows = list(reader)
    assert len(rows) == 20
    feats = torch.load(w["nextqa_features"], weights_only=True)
    for r in rows:
        assert r["type"] in {"CW", "CH", "TN", "TC", "TP", "DL", "DC", "DO"}
        assert int(r["answer"]) in range(5) and int(r["qid"]) >= 0
        v = feats[r["video"]]
        assert v.dtype == torch.float32 and v.shape[1] == 768 and 6 <= v.shape[0] <= 16 and _unit_rows(v, 1e-5)
    assert len({(r["video"], r["qid"]) for r in rows}) == len(rows)
    with open(w["nextqa_train"], newline="") as f:
        train_videos = {r["video"] for r in csv.DictReader(f)}
    assert train_videos <= set(feats) and not train_videos & {r["video"] for r in rows}
    # EgoSchema
    with open(w["egos_val"], newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EGOS_HEADER
        rows = list(reader)
    assert len(rows) == 8
    for r in rows:
        x = np.load(w["egos_features"] / f"{r['uid']}.npy")
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 768 and x.shape[0] >= 20
        assert int(r["answer"]) in range(5)


def test_world_is_deterministic_for_a_seed(tmp_path):
    kw = dict(n_textvid=6, qas_per_tideo=3, n_nextqa=5, n_nextqa_train=0, n_egos=2, dim=32, n_heads=2)
    a, b = S.build(tmp_path / "a", seed=5, **kw), S.build(tmp_path / "b", seed=5, **kw)
    c = S.build(tmp_path / "c", seed=6, **kw)
    assert "nextqa_train" not in a
    for rel in ["data/textvid/textvid.json", "data/nextqa/val.csv", "data/egos/val.csv",
                "pretrained/llama2/tokenizer.model", "pretrained/llama2/tiny/params.json", "synthetic_world.json"]:
        assert (a["root"] / rel).read_bytes() == (b["root"] / rel).read_bytes(), rel
    assert (a["root"] / "data/textvid/textvid.json").read_bytes() != (c["root"] / "data/textvid/textvid.json").read_bytes()
    for i in range(6):
        fa, fb = (load_pickled_tensor(x["textvid_features"] / f"{i}.pkl") for x in (a, b))
        assert torch.equal(fa, fb)
    assert torch.equal(load_memory(a["memory"]), load_memory(b["memory"]))
    na, nb = (torch.load(x["nextqa_features"], weights_only=True) for x in (a, b))
    assert na.keys() == nb.keys() and all(torch.equal(na[k], nb[k]) for k in na)
    ma, mb = load_meta_checkpoint(a["model_dir"]), load_meta_checkpoint(b["model_dir"])
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_questions_need_the_video():
    """The answer position is uniform, the question text alone does not fix the answer, and the 10
    frames that docs/formats.md §6 samples always see all three segments (so temporal questions are answerable)."""
    rng = np.random.default_rng(0)
    world = S.World(0)
    letters = np.zeros(5)
    answers_by_text = {}
    for _ in range(300):
        v = world.sample_video(rng)
        n = v.n_frames
        sampled = [math.floor(j * n / 10) for j in range(10)] if n > 10 else range(n)
        assert {v.segs[i] for i in sampled} == {0, 1, 2}
        for q in world.questions(v, 8, rng):
            letters[q["answer"]] += 1
            answers_by_text.setdefault(q["question"], set()).add(q["options"][q["answer"]])
            own = S.SUBJECTS[v.obj][0]
            if q["family"] in ("TC", "TN", "TP"):
                assert sorted(q["options"]) == sorted(own)  # options do not depend on the answer
    assert letters.min() > 0.8 * letters.mean()
    ambiguous = [t for t, ans in answers_by_text.items() if len(ans) > 1]
    assert len(ambiguous) > 0.5 * len(answers_by_text)
    # long EgoSchema-like videos too
    for _ in range(50):
        v = world.sample_video(rng, 20, 60)
        sampled = [math.floor(j * v.n_frames / 10) for j in range(10)]
        assert {v.segs[i] for i in sampled} == {0, 1, 2}


def test_memory_pulls_image_features_back_to_text():
    rng = np.random.default_rng(1)
    world = S.World(0)
    mem, text, image = [], [], []
    for _ in range(400):
        v = world.sample_video(rng)
        for t in range(v.n_frames):
            mem.append(world.text_feature(v.frame_concepts(t), rng))
    for _ in range(100):
        v = world.sample_video(rng)
        c = v.frame_concepts(int(rng.integers(v.n_frames)))
        text.append(world.text_feature(c, rng))
        image.append(world.image_feature(c, rng))
    mem, text, image = (torch.tensor(np.stack(x), dtype=torch.float32) for x in (mem, text, image))
    raw = F.cosine_similarity(image, text).mean()
    projected = F.cosine_similarity(project_to_memory(image, mem), text).mean()
    assert raw < 0.7 and projected > raw + 0.2


def test_fixed_world_options_do_not_depend_on_the_answer():
    """The default world offers each family's 5 options in one canonical order, so the letter is a
    function of the video alone; the matching world samples and shuffles."""
    rng = np.random.default_rng(1)
    fixed, matching = S.World(0), S.World(0, fixed=False)
    seen = {}
    for _ in range(100):
        v = fixed.sample_video(rng)
        for q in fixed.questions(v, 3, rng):
            assert q["family"] in S.FIXED_FAMILIES
            key = (q["family"], v.obj if q["family"] != "DC" else "")
            assert seen.setdefault(key, q["options"]) == q["options"]
    orders = {tuple(q["options"]) for _ in range(30)
              for q in matching.questions(matching.sample_video(rng), 8, rng) if q["family"] == "DC"}
    assert len(orders) > 5
