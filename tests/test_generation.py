"""Greedy generation (docs/evaluation.md (generation benchmarks), docs/prompts.md): the KV cache (prefill once, decode one token at a time) gives exactly the
tokens, and logits to 1e-5, of recomputing the whole sequence per token (fp32 CPU), batched over prompts
of different lengths and one row alone, with a video slot, random gates and masked ids; with the real
Llama-2 SentencePiece and Llama-3 tiktoken tokenizers and with tiny synthetic vocabularies."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llama.adapter import TOPAArgs, build_model
from llama.decoding import SYNC_EVERY, greedy_generate, shared_prefix
from llama.model import Transformer
from llama.weights import load_meta_checkpoint
from text.prompts import VIDEO
from text.tokenizer import load_tokenizer
from toyworld.tiny import make_tiny_llama

T = 10
P1 = "Instruction: Choose the correct answer based on the video and question.\nVideo:"
QUESTIONS = [("what does the man do after picking up the cup", ["drinks", "puts it down", "waves"]),
             ("why", ["yes", "no"]),
             ("how many people are dancing in the room at the end of the video", ["one", "two", "three", "four"])]
CAPTION = ("Instruction: Predict the answer based on the video and question.\nVideo:",
           "\nQuestion: Can you describe this video?\nAnswer: It is a video of")


def randomize_topa(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.trainable_parameters():
            if "gate1" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 3 - 1.5)
            elif "gate2" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 6 - 4)
    return model.eval()


def protocol_prompts(tok):
    """MVBench-style and MSR-VTT-style prompts: [BOS] + enc(P1) + VIDEO×T + enc(P2), no SEP."""
    out = []
    for q, opts in QUESTIONS:
        p2 = f"\nQuestion: {q}\nChoices: \n" + "".join(f"({'ABCD'[i]}) {o}\n" for i, o in enumerate(opts))
        out.append([tok.bos_id] + tok.encode(P1) + [VIDEO] * T + tok.encode(p2 + "Answer: The correct choice is ("))
    out.append([tok.bos_id] + tok.encode(CAPTION[0]) + [VIDEO] * T + tok.encode(CAPTION[1]))
    return out


def how_ids(tok):
    """The ids of the pieces ' how' and ' How' (masked by the MVBench / MSR-VTT protocols)."""
    ids = [tok.encode(w if tok.kind == "sentencepiece" else " " + w) for w in ("how", "How")]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


@pytest.fixture(scope="module", params=["llama2", "llama3"])
def real(request, tmp_path_factory, fixtures_dir):
    """(model, tokenizer): tiny random Llama-2 (MHA) / Llama-3 (GQA) sized to the real tokenizer."""
    kind = request.param
    tok_path = os.path.join(fixtures_dir, kind, "tokenizer.model")
    root = tmp_path_factory.mktemp(kind)
    llama2 = kind == "llama2"
    folder = make_tiny_llama(root, tok_path, dim=64 if llama2 else 32, n_layers=2, n_heads=4,
                             n_kv_heads=None if llama2 else 2, rope_theta=None if llama2 else 500000.0,
                             llama2_style=llama2, std=0.1, dtype=None)
    tok = load_tokenizer(root / "tokenizer.model")
    args = TOPAArgs.from_params_json(folder / "params.json", adapter_len=5, max_feats=T, bias=3.5)
    if args.vocab_size <= 0:
        args.vocab_size = tok.n_words
    return randomize_topa(build_model(args, load_meta_checkpoint(folder))), tok


def features(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, T, 768, generator=g), dim=-1)


def check_same(a, b, tol=1e-5):
    (ids_a, log_a), (ids_b, log_b) = a, b
    assert ids_a == ids_b
    for x, y in zip(log_a, log_b):
        assert x.shape == y.shape and (x - y).abs().max().item() < tol


# ---------------------------------------------------------------- real tokenizers

def test_cached_greedy_equals_full_recompute_real_tokenizers(real):
    model, tok = real
    prompts, vids = protocol_prompts(tok), features(4)
    assert len({len(p) for p in prompts}) == 4
    masked = how_ids(tok)
    if tok.kind == "sentencepiece":
        assert masked == [920, 1128]
    kw = dict(max_new_tokens=10, masked_ids=masked, return_logits=True)
    cached = greedy_generate(model, prompts, vids, use_cache=True, **kw)
    full = greedy_generate(model, prompts, vids, use_cache=False, **kw)
    check_same(cached, full)
    assert all(len(ids) == 10 and not set(ids) & set(masked) for ids in cached[0])


def test_each_row_alone_equals_its_batched_row(real):
    model, tok = real
    prompts, vids = protocol_prompts(tok), features(4, seed=1)
    kw = dict(max_new_tokens=6, masked_ids=how_ids(tok), return_logits=True)
    ids, logits = greedy_generate(model, prompts, vids, **kw)
    for b in range(len(prompts)):
        check_same(greedy_generate(model, prompts[b:b + 1], vids[b:b + 1], **kw), ([ids[b]], [logits[b]]))


# ---------------------------------------------------------------- synthetic vocabularies

VOCAB, TS = 300, 4


def tiny(kv_heads, impl="sdpa", seed=0):
    torch.manual_seed(seed)
    args = TOPAArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=kv_heads, vocab_size=VOCAB, multiple_of=16,
                    adapter_len=3, max_feats=TS, bias=3.5)
    return randomize_topa(build_model(args, Transformer(args).state_dict(), attn_impl=impl), seed)


def tiny_prompts(seed=0, lengths=((3, 4), (1, 1), (6, 5))):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, VOCAB, (a,), generator=g).tolist() + [VIDEO] * TS
            + torch.randint(3, VOCAB, (b,), generator=g).tolist() for a, b in lengths]


def tiny_videos(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, TS, 768, generator=g), dim=-1)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cache_equals_full_recompute_synthetic(kv_heads, impl):
    model, prompts, vids = tiny(kv_heads, impl), tiny_prompts(), tiny_videos(3)
    kw = dict(max_new_tokens=12, masked_ids=[5, 6, 7], return_logits=True)
    cached = greedy_generate(model, prompts, vids, use_cache=True, **kw)
    check_same(cached, greedy_generate(model, prompts, vids, use_cache=False, **kw))
    # and the fused cache against the eager reference
    other = "eager" if impl == "sdpa" else "sdpa"
    check_same(cached, greedy_generate(model.set_attn_impl(other), prompts, vids, use_cache=False, **kw))
    for b in range(3):
        check_same(greedy_generate(model.set_attn_impl(impl), prompts[b:b + 1], vids[b:b + 1], **kw),
                   ([cached[0][b]], [cached[1][b]]))


def test_prefill_decode_match_hidden_at_every_position():
    """Teacher-forced: prefill a left-padded batch, decode given tokens; each step's logits equal the
    scoring path's logits at that position of the whole (right-padded) sequence."""
    model, prompts, vids = tiny(2), tiny_prompts(seed=2), tiny_videos(3, seed=2)
    cont = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    B, lens = 3, [len(p) for p in prompts]
    L = max(lens)
    tokens = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, L, dtype=torch.long)
    real = torch.zeros(B, L, dtype=torch.bool)
    for b, p in enumerate(prompts):
        tokens[b, L - len(p):] = torch.tensor([0 if t == VIDEO else t for t in p])
        pos[b, L - len(p):] = torch.arange(len(p))
        real[b, L - len(p):] = True
    vs = torch.tensor([L - n + p.index(VIDEO) for n, p in zip(lens, prompts)])
    logits, cache = model.prefill(tokens, pos, real, vids, vs, capacity=L + 5)
    steps = [logits]
    for t in range(5):
        steps.append(model.decode(cont[:, t], torch.tensor(lens) + t, cache))
    for b, p in enumerate(prompts):
        seq = torch.tensor([[0 if t == VIDEO else t for t in p] + cont[b].tolist()])
        with torch.no_grad():
            h = model.hidden(seq, torch.arange(seq.shape[1])[None], None, vids[b:b + 1],
                             torch.tensor([p.index(VIDEO)]))
            ref = model.logits(h[0, len(p) - 1:])
        assert (torch.stack([s[b] for s in steps]) - ref).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="full"):
        model.decode(cont[:, 0], torch.tensor(lens) + 5, cache)


def test_decode_adds_gate2_towards_cached_video_keys():
    model, prompts, vids = tiny(2), tiny_prompts(), tiny_videos(3)
    L = len(prompts[0])
    tokens = torch.tensor([[0 if t == VIDEO else t for t in prompts[0]]])
    _, cache = model.prefill(tokens, torch.arange(L)[None], torch.ones(1, L, dtype=torch.bool), vids[:1],
                             torch.tensor([prompts[0].index(VIDEO)]), capacity=L + 2)
    nxt, pos = torch.tensor([9]), torch.tensor([L])
    a = model.decode(nxt, pos, cache)
    for lc in cache.layers:  # rewind one step, then decode the same token with another gate2
        lc.n -= 1
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.gate2.add_(2.0)
    b = model.decode(nxt, pos, cache)
    assert (a - b).abs().max().item() > 1e-3


def test_masked_ids_change_the_pick():
    model, prompts, vids = tiny(2), tiny_prompts(), tiny_videos(3)
    free = greedy_generate(model, prompts, vids, max_new_tokens=3)
    banned = [free[0][0], free[1][1]]
    out = greedy_generate(model, prompts, vids, max_new_tokens=3, masked_ids=banned)
    assert out[0][0] != free[0][0] and all(not set(r) & set(banned) for r in out)


def test_eos_and_stop_end_rows_independently():
    model, prompts, vids = tiny(4), tiny_prompts(), tiny_videos(3)
    free = greedy_generate(model, prompts, vids, max_new_tokens=8)
    eos = free[1][3]  # row 1 stops before its 4th token; other rows stop at their first `eos`, if any
    for use_cache in (True, False):
        out = greedy_generate(model, prompts, vids, max_new_tokens=8, eos_id=eos, use_cache=use_cache)
        assert out == [r[:r.index(eos)] if eos in r else r for r in free]
        stop = [None, lambda ids: len(ids) == 2, lambda ids: ids[-1] == free[2][4]]
        out = greedy_generate(model, prompts, vids, max_new_tokens=8, stop=stop, use_cache=use_cache)
        assert out == [free[0], free[1][:2], free[2][:free[2].index(free[2][4]) + 1]]


def test_generation_without_video():
    model = tiny(2)
    prompts = [[1, 8, 9, 10], [1, 20], [1, 30, 31, 32, 33, 34, 35]]
    kw = dict(max_new_tokens=6, return_logits=True)
    check_same(greedy_generate(model, prompts, None, **kw),
               greedy_generate(model, prompts, None, use_cache=False, **kw))


def test_bad_prompts_and_caches_are_clear_errors():
    model, prompts, vids = tiny(2), tiny_prompts(), tiny_videos(3)
    with pytest.raises(ValueError, match="no video was given"):
        greedy_generate(model, prompts, None, max_new_tokens=2)
    with pytest.raises(ValueError, match="exactly 4 contiguous VIDEO"):
        greedy_generate(model, [prompts[0][:-1] + [VIDEO]] + prompts[1:], vids, max_new_tokens=2)
    with pytest.raises(ValueError, match="3 prompts but 2 videos"):
        greedy_generate(model, prompts, vids[:2], max_new_tokens=2)
    L = len(prompts[0])
    _, cache = model.prefill(torch.ones(1, L, dtype=torch.long), torch.arange(L)[None],
                             torch.ones(1, L, dtype=torch.bool), capacity=L + 1)
    with pytest.raises(ValueError, match="attn_impl='sdpa'"):
        model.set_attn_impl("eager").decode(torch.tensor([3]), torch.tensor([L]), cache)


class HostReads(TorchFunctionMode):
    """Counts the calls that make the host wait for the device's values."""
    READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.numpy}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += func in self.READS
        return func(*args, **(kwargs or {}))


def test_cached_decoding_reads_the_device_every_few_steps_only():
    """Without Python stop callbacks the decoding loop stays on the device: the host reads it to end
    the loop every SYNC_EVERY steps and once at the end, not per token (the old loop read every
    step's ids: 12+ reads for 12 tokens). The tokens are those of the per-step loop (full recompute)."""
    model, prompts, vids = tiny(2), tiny_prompts(), tiny_videos(3)
    with HostReads() as reads:
        cached = greedy_generate(model, prompts, vids, max_new_tokens=12, masked_ids=[5])
    assert reads.n <= 12 // SYNC_EVERY + 2, reads.n
    assert cached == greedy_generate(model, prompts, vids, max_new_tokens=12, masked_ids=[5], use_cache=False)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shared_prefix_runs_once_and_changes_nothing(impl):
    """The text that starts every prompt (before the video) is prefilled once for the batch and seeds
    every row's cache: tokens and logits equal full recomputation and each row alone (no prefix)."""
    model = tiny(2, impl)
    head = [1, 17, 18, 19, 20, 21]
    prompts, vids = [head + p[1:] for p in tiny_prompts()], tiny_videos(3)
    assert shared_prefix(prompts) == len(head) and shared_prefix(prompts + [head[:3] + [40]]) == 3
    assert shared_prefix([head + [VIDEO] * TS, head + [VIDEO] * TS]) == len(head)
    assert shared_prefix([head, head]) == len(head) - 1 and shared_prefix([head]) == 0
    kw = dict(max_new_tokens=5, masked_ids=[5], return_logits=True)
    cached = greedy_generate(model, prompts, vids, **kw)
    check_same(cached, greedy_generate(model, prompts, vids, use_cache=False, **kw))
    for b in range(3):
        check_same(greedy_generate(model, prompts[b:b + 1], vids[b:b + 1], **kw), ([cached[0][b]], [cached[1][b]]))
    check_same(greedy_generate(model, [head + [40], head + [41, 42]], None, **kw),
               greedy_generate(model, [head + [40], head + [41, 42]], None, use_cache=False, **kw))
