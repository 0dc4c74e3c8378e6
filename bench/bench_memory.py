"""Memory of TOPA at the real shapes (Llama-2 7B/13B, Llama-3 8B, Llama-3.1 8B, Llama-3.2 3B/1B): what fits
in a 40 GiB GPU, the largest batches that fit 24 and 80 GiB per backbone, and the host memory of loading a
sharded checkpoint.

COMPUTED, not measured on a GPU (none was available when this was written):
- weights, TOPA parameters + AdamW state, the memory bank: exact byte counts of the tensors;
- activations: the model's real forward (and backward) run on the `meta` device, where tensors have
  shapes and dtypes but no data, while a dispatch mode adds up the bytes of every live tensor (weights
  and inputs excluded) and keeps the peak. Eager attention is the code's eager path. The fused path
  is the code's SDPA path with the kernel itself replaced by a stand-in that allocates what the CUDA
  flash / memory-efficient kernels allocate (output, [B, H, L] fp32 logsumexp, the mask as a bias in
  the compute dtype; backward: dq, dk, dv), since on `meta` SDPA would fall back to its math kernel,
  which materialises the [B, H, L, L] scores. Gradient checkpointing wraps every layer in
  `torch.utils.checkpoint` (non-reentrant). Not included: the CUDA context and the allocator's
  fragmentation (together ~1-2 GiB), NCCL buffers, the flat copy of the TOPA gradients all-reduced under torchrun (fp32).
MEASURED here: peak host memory (anonymous RSS) of loading a 2-shard Meta checkpoint merged in host
memory (`load_meta_checkpoint`, the old path) vs streamed tensor by tensor (`MetaShards`).

  python bench/bench_memory.py                         # computed tables + a ~650 MB load measurement
  python bench/bench_memory.py --measure_layers 0      # computed tables only
  python bench/bench_memory.py --backbones_only        # the per-backbone table (README's) only
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dataloader.packing import collate_rows, pack_options, single_row  # noqa: E402
from engine.losses import token_nll  # noqa: E402
from engine.losses import qav_loss, span_loss  # noqa: E402
from llama.adapter import TOPA, TOPAArgs, build_model, is_trainable  # noqa: E402
from llama.build import DTYPES  # noqa: E402
from llama.weights import MetaShards, load_meta_checkpoint  # noqa: E402
from text.prompts import VIDEO, Sequence  # noqa: E402

GiB, MiB = 2 ** 30, 2 ** 20
T, CLIP, ADAPTER_LEN = 10, 768, 50
# Meta's params.json of each backbone (Llama-2 writes vocab_size -1: its tokenizer has 32000 pieces)
LLAMAS = {
    "llama2_7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, norm_eps=1e-5),
    "llama2_13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, multiple_of=256, norm_eps=1e-5),
    "llama3_8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                      ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0),
    # Llama-3.1 8B is Llama-3 8B with scaled RoPE; Llama-3.2 1B/3B tie the output layer to the embedding
    "llama3_1_8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, rope_scaling={"factor": 8.0}),
    "llama3_2_3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, multiple_of=256,
                        ffn_dim_multiplier=1.0, norm_eps=1e-5, rope_theta=500000.0, rope_scaling={"factor": 32.0},
                        tie_embeddings=True),
    "llama3_2_1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=256,
                        ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, rope_scaling={"factor": 32.0},
                        tie_embeddings=True),
}
# the per-GPU batch of scripts/common.sh (pre-alignment; Llama-3.x rows use the Llama-3 8B recipe)
SCRIPT_BATCH = {"llama2_7b": 18, "llama2_13b": 4, "llama3_8b": 14, "llama3_1_8b": 14, "llama3_2_3b": 14,
                "llama3_2_1b": 14}
CARDS = (24 * GiB, 80 * GiB)
RESERVE = 2 * GiB  # CUDA context and allocator fragmentation
MEMORY_ROWS = 1_000_000
BUDGET = 40 * GiB


# ---------------------------------------------------------------- live tensor bytes on the meta device

class LiveBytes(TorchDispatchMode):
    """Adds up the storage bytes of every tensor an op creates while it is alive; `peak` is the maximum.
    Storages of `known` tensors (weights, inputs) are not counted."""

    def __init__(self, known=()):
        super().__init__()
        self.known = {t.untyped_storage()._cdata for t in known}
        self.live = self.peak = 0
        self.refs = {}

    def _free(self, key, n):
        self.live -= n
        self.refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self.known or key in self.refs:
                continue
            n = st.nbytes()
            self.live += n
            self.peak = max(self.peak, self.live)
            self.refs[key] = weakref.ref(st, lambda _, k=key, n=n: self._free(k, n))
        return out


class FusedKernel(torch.autograd.Function):
    """What a fused CUDA attention kernel allocates, without computing anything: forward keeps q, k, v,
    the output and a [B, H, L] fp32 logsumexp (and a bool mask turned into a bias in the compute
    dtype); backward makes dq, dk, dv. No [L, Lk] scores."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])                         # [B, H, L, e]
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)   # [B, H, L]
        bias = None if mask is None else torch.empty(mask.shape, dtype=q.dtype, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *_ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


class fused_kernels:
    """Context: F.scaled_dot_product_attention -> FusedKernel (shapes as the real call's)."""

    def __enter__(self):
        self.orig = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = (lambda q, k, v, attn_mask=None, **kw:
                                          FusedKernel.apply(q, k, v, attn_mask))

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self.orig


class NoWeights:
    """A weight source that leaves the model's tensors as allocated (on `meta`: shapes only)."""

    def __init__(self, model_shapes):
        self.shapes = model_shapes

    def read_into(self, key, out):
        pass


def meta_model(args: TOPAArgs, impl: str) -> TOPA:
    """The TOPA model as built for a run (bf16 backbone, fp32 TOPA tensors), on the meta device."""
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in TOPA(args).named_parameters() if not is_trainable(n)}
    return build_model(args, NoWeights(shapes), dtype=torch.bfloat16, device="meta", attn_impl=impl)


def sequence(L: int, video_start: int, span: int) -> Sequence:
    """A token sequence of length L with the video slot at video_start and the last `span` tokens scored."""
    tokens = [5] * L
    tokens[0] = 1
    tokens[video_start:video_start + T] = [VIDEO] * T
    return Sequence(tokens, video_start, L - span)


def options(prefix: int, n: int = 5, tail: int = 3):
    """The n option sequences of one question: a shared `prefix`, then `tail` tokens that differ."""
    base = sequence(prefix, 17, 1).tokens
    return [Sequence(base + [10 + k] + [6] * (tail - 1), 17, prefix) for k in range(n)]


def batch_tensors(b):
    return [getattr(b, f.name) for f in fields(b) if isinstance(getattr(b, f.name), torch.Tensor)]


def video(rows):
    return [torch.zeros(T, CLIP) for _ in range(rows)]


def eval_batch(questions: int, prefix: int, scoring: str):
    """One scoring batch of `questions` x 5 options sharing a `prefix` ("packed" or "full" rows)."""
    qs = [options(prefix) for _ in range(questions)]
    rows = [pack_options(q) for q in qs] if scoring == "packed" else [single_row(s) for q in qs for s in q]
    return collate_rows(rows, video(len(rows)))


def finetune_parts(batch_size: int, L: int) -> dict:
    """The three parts of a --vaq --qav finetuning batch of rows of length L."""
    return {"vqa": collate_rows([single_row(sequence(L, 17, 4))] * batch_size, video(batch_size)),
            "vaq": collate_rows([single_row(sequence(L, 17, 15))] * batch_size, video(batch_size)),
            "qav": collate_rows([single_row(sequence(L, L - T - 1, 0), scored=False)] * batch_size,
                                video(batch_size))}


def eval_peak(args, impl, questions, prefix, scoring):
    """Peak activation bytes of scoring one batch of `questions` (5 options each, under no_grad)."""
    model = meta_model(args, impl)
    batch = eval_batch(questions, prefix, scoring).to("meta")
    kernels = fused_kernels() if impl == "sdpa" else contextlib.nullcontext()
    with torch.no_grad(), kernels, LiveBytes(list(model.parameters()) + batch_tensors(batch)) as live:
        token_nll(model, batch, batch.video)
    return live.peak, tuple(batch.tokens.shape)


def train_peak(args, impl, batch_size, L, checkpointing, flipped=True):
    """Peak bytes of one finetuning step with --vaq --qav: three forwards (vqa, vaq, qav) whose graphs
    live together until one backward (what TrainStep does), TOPA gradients included. flipped=False: the
    vqa forward alone (a pre-alignment step: an mcqa or a caption batch)."""
    model = meta_model(args, impl).train()
    if checkpointing:
        from torch.utils.checkpoint import checkpoint
        for layer in model.layers:
            layer.forward = (lambda *a, f=layer.forward, **k:
                             checkpoint(f, *a, use_reentrant=False, preserve_rng_state=False, **k))
    parts = {k: b.to("meta") for k, b in finetune_parts(batch_size, L).items() if flipped or k == "vqa"}
    known = list(model.parameters()) + [t for b in parts.values() for t in batch_tensors(b)]
    kernels = fused_kernels() if impl == "sdpa" else contextlib.nullcontext()
    with kernels, LiveBytes(known) as live:
        loss = span_loss(model, parts["vqa"])
        if flipped:
            loss = loss + span_loss(model, parts["vaq"]) + qav_loss(model, parts["qav"], 100.0)
        loss.backward()
    return live.peak


# ---------------------------------------------------------------- computed tables

def counts(args):
    with torch.device("meta"):
        model = TOPA(args)
    topa = sum(p.numel() for n, p in model.named_parameters() if is_trainable(n))
    backbone = sum(p.numel() for n, p in model.named_parameters() if not is_trainable(n))
    return backbone, topa


def gib(x):
    return f"{x / GiB:.2f}"


def computed_tables():
    print("COMPUTED from the real shapes (not measured: no GPU in this task). GiB = 2^30 bytes.\n")
    print(f"{'backbone':<11} {'params':>8} {'weights bf16':>13} {'TOPA params':>12} {'TOPA+grad+AdamW fp32':>21}")
    for name, p in LLAMAS.items():
        args = TOPAArgs(**p, adapter_len=ADAPTER_LEN, max_feats=T)
        backbone, topa = counts(args)
        print(f"{name:<11} {backbone / 1e9:7.2f}B {gib(2 * backbone):>13} {topa / 1e6:11.1f}M {gib(16 * topa):>21}")
    bank16, bank32 = MEMORY_ROWS * CLIP * 2, MEMORY_ROWS * CLIP * 4
    chunk = 65536
    proj = chunk * CLIP * 4 + 2 * 100 * chunk * 4  # one fp32 chunk + logits and probabilities of 100 frames
    print(f"\nmemory bank {MEMORY_ROWS:,} x {CLIP}: fp16 {gib(bank16)} GiB (stored), fp32 {gib(bank32)} GiB; "
          f"projection transient (fp32 chunk of {chunk} rows, 100 frames) {gib(proj)} GiB\n")

    args = TOPAArgs(**LLAMAS["llama2_13b"], adapter_len=ADAPTER_LEN, max_feats=T)
    backbone, topa = counts(args)
    weights = 2 * backbone
    print("Llama-2 13B evaluation, one batch of 10 questions x 5 options (bf16, no grad), peak activation GiB:")
    print(f"{'benchmark':<28} {'scoring':<8} {'rows x L':>10} {'[B,H,L,L] fp32':>15} {'eager':>7} {'fused':>7} "
          f"{'total eager/fused (weights + fp16 bank)':>40}")
    verdict = {}
    for bench, prefix in (("NExT-QA (longest 130)", 127), ("EgoSchema (max_seq_len 600)", 597)):
        for scoring in ("packed", "full"):
            eager, (B, L) = eval_peak(args, "eager", 10, prefix, scoring)
            fused, _ = eval_peak(args, "sdpa", 10, prefix, scoring)
            scores = 4 * B * args.n_heads * L * L
            te, tf = weights + bank16 + max(eager, proj), weights + bank16 + max(fused, proj)
            verdict[f"eval {bench.split()[0]} {scoring} (eager / fused)"] = (te, tf)
            print(f"{bench:<28} {scoring:<8} {f'{B} x {L}':>10} {gib(scores):>15} {gib(eager):>7} {gib(fused):>7} "
                  f"{gib(te):>19} / {gib(tf)}")

    print("\nLlama-2 13B finetuning, --vaq --qav, batch 6 per GPU (scripts/finetune/llama2_13b.sh), rows padded to "
          "L = 128 (max_seq_len), three forwards + one backward, peak GiB (activations + the TOPA gradients):")
    print(f"{'attention':<22} {'no checkpointing':>17} {'checkpointing':>14} "
          f"{'total (+ weights, TOPA params and AdamW state), no ckpt / ckpt':>64}")
    state = 12 * topa  # fp32 params + AdamW's two moments (the gradients are in the measured peak)
    for impl, label in (("eager", "eager fp32 scores"), ("sdpa", "fused (SDPA)")):
        a, c = train_peak(args, impl, 6, 128, False), train_peak(args, impl, 6, 128, True)
        verdict[f"finetune {impl} (no ckpt / ckpt)"] = (weights + state + a, weights + state + c)
        print(f"{label:<22} {gib(a):>17} {gib(c):>14} {gib(weights + state + a):>49} / {gib(weights + state + c)}")
    print(f"\n13B weights {gib(weights)} GiB; TOPA params + AdamW state {gib(state)} GiB; memory bank in evaluation "
          f"(fp16) {gib(bank16)} GiB (fp32 would add {gib(bank32 - bank16)}). Budget 40 GiB (A100-40GB), "
          f"~1-2 GiB of it for the CUDA context and fragmentation:")
    ok = lambda x: "fits" if x + 2 * GiB <= BUDGET else ("tight" if x <= BUDGET else "DOES NOT FIT")  # noqa: E731
    for k, (a, b) in verdict.items():
        print(f"  {k:<42} {gib(a):>6} / {gib(b):>6} GiB: {ok(a)} / {ok(b)}")
    evals = [x for k, v in verdict.items() if k.startswith("eval") for x in v]
    train = {k: v for k, v in verdict.items() if k.startswith("finetune")}
    print(f"=> 13B evaluation within 40 GiB: {'yes' if all(ok(x) == 'fits' for x in evals) else 'NO'} (worst "
          f"{gib(max(evals))} GiB). 13B finetuning (--vaq --qav, batch 6) within 40 GiB: "
          f"{'yes' if all(ok(v[0]) == 'fits' for v in train.values()) else 'only with gradient checkpointing'} "
          f"(without: {' / '.join(gib(v[0]) for v in train.values())} GiB eager / fused; with: "
          f"{' / '.join(gib(v[1]) for v in train.values())}).")
    host = 2 * backbone
    print(f"\nHost memory of loading 13B in each of the scripts' 4 processes: merged in host memory {gib(host)} GiB "
          f"of anonymous memory per process ({gib(4 * host)} GiB for 4); streamed: one tensor in transit per process "
          f"(largest: the output layer's shard, {gib(2 * 32000 * 5120 // 2)} GiB), the shards' pages shared in the "
          f"page cache ({gib(host)} GiB once).")


def largest_fitting(total, budget: int, cap: int = 1024) -> int:
    """The largest batch b <= cap with total(b) + RESERVE <= budget (0: none). total(b) is close to linear
    in b: the line through b = 1 and 2 gives a first guess, then exact evaluations step to the answer."""
    t1 = total(1)
    if t1 + RESERVE > budget:
        return 0
    slope = max(total(2) - t1, 1)
    b = max(1, min(cap, 1 + int((budget - RESERVE - t1) // slope)))
    while b > 1 and total(b) + RESERVE > budget:
        b -= 1
    while b < cap and total(b + 1) + RESERVE <= budget:
        b += 1
    return b


def backbone_table(names=("llama2_7b", "llama3_1_8b", "llama3_2_3b", "llama3_2_1b")):
    """Per backbone: weights; a pre-alignment step (TextVid, rows padded to max_seq_len 150, fused attention,
    no gradient checkpointing) at the script's batch per GPU and the largest batch per GPU that fits 24 and
    80 GiB; evaluation of EgoSchema (the longest prompts: 600 tokens, 5 options packed, + the fp16 memory
    bank) at the script's 10 questions per batch and the largest number that fits (capped at 1024). Totals
    include weights and (training) TOPA parameters + AdamW state; fits = total + 2 GiB reserve for the CUDA
    context and fragmentation <= the card."""
    print("\nCOMPUTED per backbone (GiB; fits = total + 2 GiB reserve <= the card):")
    print(f"{'backbone':<12} {'weights':>8} | {'pre-align batch':>15} {'GiB':>6} {'max 24G':>8} {'max 80G':>8} | "
          f"{'EgoSchema 10 q GiB':>18} {'max 24G':>8} {'max 80G':>8}")
    rows = {}
    bank = MEMORY_ROWS * CLIP * 2
    for name in names:
        args = TOPAArgs(**LLAMAS[name], adapter_len=ADAPTER_LEN, max_feats=T)
        backbone, topa = counts(args)
        weights, state = 2 * backbone, 12 * topa  # fp32 params + AdamW moments (the grads are in the peak)

        def train_total(b):
            return weights + state + train_peak(args, "sdpa", b, 150, False, flipped=False)

        def eval_total(q):
            return weights + bank + eval_peak(args, "sdpa", q, 597, "packed")[0]

        b = SCRIPT_BATCH[name]
        r = {"weights": weights, "pretrain_batch": b, "pretrain": train_total(b), "eval": eval_total(10),
             "pretrain_max": [largest_fitting(train_total, c) for c in CARDS],
             "eval_max": [largest_fitting(eval_total, c) for c in CARDS]}
        rows[name] = r
        print(f"{name:<12} {gib(weights):>8} | {b:>15} {gib(r['pretrain']):>6} {r['pretrain_max'][0]:>8} "
              f"{r['pretrain_max'][1]:>8} | {gib(r['eval']):>18} {r['eval_max'][0]:>8} {r['eval_max'][1]:>8}",
              flush=True)
    return rows


# ---------------------------------------------------------------- measured: host memory of a load

def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def load_child(folder: str, mode: str, precision: str):
    """Load `folder` (a Meta folder) into TOPA on the CPU, `streamed` or `merged`, and print one JSON line
    (MiB): `overhead` = peak anonymous RSS during the load - anonymous RSS before - the model's own
    bytes, i.e. host memory the load needs beyond the weights it produces (on a GPU target the weights
    are not host memory, so this is the load's whole host cost there). Anonymous memory is what a
    process owns; the mmapped shards' pages are page cache (file-backed, shared between processes,
    dropped under pressure) and are reported apart: `hwm` = peak of all RSS, page cache included.
    RssAnon has no kernel-kept peak, so a thread samples it every 0.2 ms; allocations live far longer.
    The base is taken after a warm-up, so that one-time costs of the process are not counted."""
    torch.set_num_threads(1)
    args = TOPAArgs.from_params_json(Path(folder) / "params.json")
    with torch.device("meta"):  # warm-up: the first module built on `meta` costs ~65 MB once (torch's
        TOPA(TOPAArgs(dim=8, n_layers=1, n_heads=1, vocab_size=8))  # lazy imports), whatever the model
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_kib("RssAnon"))
            time.sleep(0.0002)

    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    base, base_rss = status_kib("RssAnon"), status_kib("VmRSS")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    weights = MetaShards(folder) if mode == "streamed" else load_meta_checkpoint(folder)
    model = build_model(args, weights, dtype=DTYPES[precision])
    del weights
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak_anon = max(peak[0], status_kib("RssAnon"))
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    shards = [p.stat().st_size for p in Path(folder).glob("consolidated.*.pth")]
    print(json.dumps({"mode": mode, "precision": precision, "seconds": seconds,
                      "model": sum(sizes) / MiB, "largest_tensor": max(sizes) / MiB, "shard": max(shards) / MiB,
                      "peak_anon": (peak_anon - base) / 1024, "overhead": (peak_anon - base) / 1024 - sum(sizes) / MiB,
                      "hwm": (status_kib("VmHWM") - base_rss) / 1024}))


def measure_load(folder, mode: str, precision: str = "fp32") -> dict:
    """Run `load_child` in a fresh process (so the peak is this load's alone) and return its figures.
    MALLOC_MMAP_THRESHOLD_ makes every large allocation its own mapping, returned to the system when
    freed, so that RSS follows live memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--load_child", str(folder), mode, precision],
                       capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"load measurement ({mode}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_model(folder, dim, layers, vocab, seed=0):
    """A random 2-shard Meta folder (bf16, Meta's split dims) with the real vocab size in params.json."""
    from llama.model import ModelArgs
    from toyworld.tiny import random_llama_state, write_meta_checkpoint
    params = dict(dim=dim, n_layers=layers, n_heads=max(1, dim // 128), vocab_size=vocab, multiple_of=256,
                  norm_eps=1e-5)
    return write_meta_checkpoint(folder, params, random_llama_state(ModelArgs(**params), seed=seed), n_shards=2)


def measured_table(dim, layers, vocab):
    print(f"\nMEASURED on this machine: host memory of loading a 2-shard Meta folder (dim {dim}, {layers} layers, "
          f"vocab {vocab}, bf16 shards) into TOPA on the CPU, each load in its own process. MiB.")
    with tempfile.TemporaryDirectory() as tmp:
        write_model(tmp, dim, layers, vocab)
        print(f"{'load':<9} {'dtype':<6} {'shard':>7} {'model':>7} {'peak anon':>10} {'beyond the model':>17} "
              f"{'peak RSS incl. page cache':>26} {'s':>6}")
        for precision in ("bf16", "fp32"):
            for mode in ("merged", "streamed"):
                r = measure_load(tmp, mode, precision)
                print(f"{mode:<9} {precision:<6} {r['shard']:7.0f} {r['model']:7.0f} {r['peak_anon']:10.0f} "
                      f"{r['overhead']:17.0f} {r['hwm']:26.0f} {r['seconds']:6.2f}")
    print("'beyond the model' is what the load costs the host when the weights go to a GPU: merged holds the "
          "whole concatenated checkpoint; streamed only what is in transit. Page cache is shared by all processes.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure_dim", type=int, default=2048)
    p.add_argument("--measure_layers", type=int, default=4, help="0: skip the measurement")
    p.add_argument("--measure_vocab", type=int, default=32000)
    p.add_argument("--load_child", nargs=3, metavar=("FOLDER", "MODE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--backbones_only", action="store_true", help="only the per-backbone table")
    a = p.parse_args(argv)
    if a.load_child:
        return load_child(*a.load_child)
    if a.backbones_only:
        return backbone_table()
    computed_tables()
    backbone_table()
    if a.measure_layers:
        measured_table(a.measure_dim, a.measure_layers, a.measure_vocab)


if __name__ == "__main__":
    main()
