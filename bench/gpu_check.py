"""Everything a borrowed GPU node can tell in one command (bench/gpu_check.sh), at the real Llama-2 7B,
Llama-3 8B and Llama-2 13B shapes with random weights drawn on the device (no download), written to
one JSON file and one markdown table:

  numerics   max |bf16 - fp32| of multiple-choice scores (mean option NLL) and training losses, and
             max |fused (SDPA) - eager| in fp32 and bf16 (same random weights in both dtypes)
  sdpa       which kernel `scaled_dot_product_attention` ran (flash / memory-efficient / cuDNN, or the
             math fallback), read from the profiler's op names, for the masked (packed scoring), causal
             (training rows) and decoding calls
  (the speed checks run in bf16 on GPU, in fp32 on CPU)
  eval       questions/s, shared-prefix vs full per-option scoring (bench/bench_eval.py's run)
  train      finetuning tokens/s (vqa + vaq + qav, bench/bench_train.py's items) and MFU, with and
             without gradient checkpointing. MFU counts 4 x backbone params FLOPs per token (forward 2N,
             backward 2N for the input gradients: the frozen backbone has no weight gradients); the
             recomputation of checkpointing is not counted as useful work; peak: 989 TFLOP/s dense bf16
             (H100/H200 SXM), other GPUs: no MFU
  generate   tokens/s of eval's generation path (bench/bench_generate.py's items), KV cache vs full
             recomputation, batch 1 and 16
  vit        ViT-L/14 (random HF CLIPVisionModel at OpenAI's shapes) fp16 frames/s
  memory     (Llama-2 13B) measured peak activation memory of bench_memory.py's eval and finetuning
             batches against its computed table (the same batches, computed on the meta device)

  bash bench/gpu_check.sh [--out DIR]           # a GPU node: < 8 min on one H100/H200
  bash bench/gpu_check.sh --tiny [--out DIR]    # the same on CPU with tiny shapes, < 1 min (CI runs it)

Reads the real tokenizers and NExT-QA text of tests/fixtures (`--fixtures` or TOPA_FIXTURES: another copy).
Writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: ./gpu_check).
"""
import argparse
import json
import os
import platform
import sys
import time
import zlib
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import bench_eval  # noqa: E402
import bench_generate  # noqa: E402
import bench_memory  # noqa: E402
import bench_train  # noqa: E402
from dataloader.packing import ScoringCollate  # noqa: E402
from dataloader.train_batches import TrainCollate  # noqa: E402
from engine.generation import generate  # noqa: E402
from engine.infer import score  # noqa: E402
from engine.losses import TrainStep, qav_loss, span_loss, token_nll, total_loss  # noqa: E402
from llama.adapter import TOPA, TOPAArgs, build_model, is_trainable  # noqa: E402
from llama.model import skip_init  # noqa: E402
from text.prompts import PromptBuilder  # noqa: E402
from text.protocols import MSRVTT  # noqa: E402
from text.tokenizer import load_tokenizer  # noqa: E402
from toyworld.fixtures import add_argument as add_fixtures_argument  # noqa: E402
from util.schedule import param_groups  # noqa: E402

T = 10
SHAPES = {k: bench_memory.LLAMAS[k] for k in ("llama2_7b", "llama3_8b", "llama2_13b")}
TINY_SHAPES = {"tiny_llama2": dict(dim=64, n_layers=2, n_heads=4, vocab_size=32000, multiple_of=32),
               "tiny_gqa": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, multiple_of=32,
                                rope_theta=500000.0)}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (SXM)
# sizes: (eval questions, eval batch, train batch, train steps, generation items, numerics items)
SIZES = {"real": (40, 10, 6, 4, 16, 10), "tiny": (6, 3, 2, 2, 4, 3)}


class RandomWeights:
    """A backbone weight source for `build_model` that draws each tensor on the device: linear weights
    N(0, 1/fan_in) (the output layer 4/dim: next-token logits of std ~2, so scores are not flat),
    embeddings N(0, 1), RMSNorm weights 1 + N(0, 0.1). A tensor's values depend on its name only
    (drawn in fp32, then cast), so the fp32 and the bf16 model hold the same weights."""

    def __init__(self, args: TOPAArgs, seed: int = 0):
        with torch.device("meta"), skip_init():
            model = TOPA(args)
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if not is_trainable(n)}
        self.seed = seed

    def read_into(self, key, out):
        g = torch.Generator(device=out.device).manual_seed(self.seed + zlib.crc32(key.encode()))
        x = torch.randn(out.shape, generator=g, device=out.device)
        if "norm" in key:
            x = 1 + 0.1 * x
        elif key.startswith("output"):
            x = x * 2 / out.shape[1] ** 0.5
        elif not key.startswith("tok_embeddings"):
            x = x / out.shape[1] ** 0.5
        out.copy_(x)


def make_model(args, dtype, device, impl="sdpa"):
    model = build_model(args, RandomWeights(args), dtype=dtype, device=device, attn_impl=impl)
    g = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():  # gates and adapters away from their init, so every term is live
        for name, p in model.trainable_parameters():
            p.copy_(torch.rand(p.shape, generator=g, device=device) * 3 - 2 if "gate" in name else
                    0.02 * torch.randn(p.shape, generator=g, device=device))
    return model.eval()


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def sync_fn(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# ---------------------------------------------------------------- the checks of one shape

def scores_and_losses(model, eval_items, train_batch, device):
    """Scores of every option (shared prefix) and the finetuning losses, fused and eager kernels."""
    out = {}
    for impl in ("sdpa", "eager"):
        model.set_attn_impl(impl)
        with torch.no_grad():
            batch = ScoringCollate("packed")(eval_items).to(device)
            scores = torch.tensor([s.nll for s in score(model, batch)])
            losses = {k: float(v) for k, v in TrainStep(model)(train_batch.to(device)).items()}
        out[impl] = (scores, losses)
    model.set_attn_impl("sdpa")
    return out


def numerics(fp32, bf16) -> dict:
    def loss_diff(a, b):
        return max(abs(a[k] - b[k]) for k in a)
    return {"scores_bf16_vs_fp32": max_diff(bf16["sdpa"][0], fp32["sdpa"][0]),
            "losses_bf16_vs_fp32": loss_diff(bf16["sdpa"][1], fp32["sdpa"][1]),
            "scores_fused_vs_eager_fp32": max_diff(fp32["sdpa"][0], fp32["eager"][0]),
            "losses_fused_vs_eager_fp32": loss_diff(fp32["sdpa"][1], fp32["eager"][1]),
            "scores_fused_vs_eager_bf16": max_diff(bf16["sdpa"][0], bf16["eager"][0]),
            "losses_fused_vs_eager_bf16": loss_diff(bf16["sdpa"][1], bf16["eager"][1]),
            "losses_fp32": fp32["sdpa"][1]}


class AtenOps(TorchDispatchMode):
    """The names of the aten ops run inside (below autograd: the kernels SDPA dispatched to)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def sdpa_ops(fn) -> list:
    """The scaled-dot-product kernels `fn()` ran: flash / efficient / cudnn (fused), or math (the
    fallback that materialises the scores)."""
    with AtenOps() as ops:
        fn()
    return sorted(n for n in ops.names if "scaled_dot_product" in n)


def sdpa_backends(model, eval_items, train_batch, gen_items, tok, device) -> dict:
    batch = ScoringCollate("packed")(eval_items).to(device)
    part = train_batch.to(device).parts["vqa"]
    with torch.no_grad():
        out = {"masked (packed scoring)": sdpa_ops(lambda: score(model, batch)),
               "causal, no mask (training rows)": sdpa_ops(lambda: span_loss(model, part)),
               "decoding (KV cache, mask)": sdpa_ops(lambda: generate(model, tok, gen_items[:2], MSRVTT, batch_size=2,
                                                                      progress=False))}
    out["math_fallback"] = sorted(k for k, ops in out.items() if any("math" in o for o in ops))
    return out


def eval_speed(model, items, batch_size, device) -> dict:
    sync = sync_fn(device)
    packed, s1 = bench_eval.run(model, items, "packed", batch_size, device, sync)
    full, s2 = bench_eval.run(model, items, "full", batch_size, device, sync)
    return {"questions_per_s_shared_prefix": packed, "questions_per_s_full": full, "ratio": packed / full,
            "max_score_diff": max_diff(s1, s2)}


def train_speed(model, batches, device, n_backbone: int, peak) -> dict:
    sync = sync_fn(device)
    model.train()
    step = TrainStep(model)
    opt = torch.optim.AdamW(param_groups(model.trainable_parameters(), 0.1), lr=1e-5, betas=(0.9, 0.95))
    out = {}
    for ckpt in (False, True):
        model.grad_checkpointing = ckpt

        def one(tb):
            loss = total_loss(step(tb.to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        one(batches[0])
        sync()
        t0 = time.perf_counter()
        for tb in batches[1:]:
            one(tb)
        sync()
        tps = sum(tb.n_tokens for tb in batches[1:]) / (time.perf_counter() - t0)
        key = "grad_checkpointing" if ckpt else "plain"
        out[key] = {"tokens_per_s": tps, "mfu": None if peak is None else 4 * n_backbone * tps / peak}
    model.grad_checkpointing = False
    model.eval()
    return out


def generation_speed(model, tok, items, device) -> dict:
    sync = sync_fn(device)
    out, ids = {}, {}
    for bs in (1, 16):
        for kv in (True, False):
            generate(model, tok, items[:2], MSRVTT, batch_size=bs, kv_cache=kv, progress=False)
            sync()
            t0 = time.perf_counter()
            got = generate(model, tok, items, MSRVTT, batch_size=bs, kv_cache=kv, progress=False)
            sync()
            dt = time.perf_counter() - t0
            ids[bs, kv] = [o["ids"] for o in got]
            out[f"batch{bs}_{'kv_cache' if kv else 'full'}_tokens_per_s"] = sum(map(len, ids[bs, kv])) / dt
    out["kv_over_full_batch1"] = out["batch1_kv_cache_tokens_per_s"] / out["batch1_full_tokens_per_s"]
    out["kv_over_full_batch16"] = out["batch16_kv_cache_tokens_per_s"] / out["batch16_full_tokens_per_s"]
    out["same_tokens"] = len({json.dumps(v) for v in ids.values()}) == 1
    return out


def memory_check(model, args, device, tiny: bool) -> dict:
    """Measured peak activation memory of bench_memory's batches vs its computed values (meta device)."""
    questions, prefix, ft_batch, L = (2, 40, 2, 40) if tiny else (10, 127, 6, 128)
    computed = {"eval_packed": bench_memory.eval_peak(args, "sdpa", questions, prefix, "packed")[0],
                "finetune": bench_memory.train_peak(args, "sdpa", ft_batch, L, False),
                "finetune_grad_checkpointing": bench_memory.train_peak(args, "sdpa", ft_batch, L, True)}
    out = {k: {"computed_gib": v / 2 ** 30, "measured_gib": None} for k, v in computed.items()}
    if device.type != "cuda":
        return out

    def peak(fn):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30

    batch = bench_memory.eval_batch(questions, prefix, "packed").to(device)
    with torch.no_grad():
        out["eval_packed"]["measured_gib"] = peak(lambda: token_nll(model, batch, batch.video))
    parts = {k: b.to(device) for k, b in bench_memory.finetune_parts(ft_batch, L).items()}
    model.train()
    for key, ckpt in (("finetune", False), ("finetune_grad_checkpointing", True)):
        model.grad_checkpointing = ckpt

        def step():
            loss = span_loss(model, parts["vqa"]) + span_loss(model, parts["vaq"]) + qav_loss(model, parts["qav"], 100.)
            loss.backward()
        out[key]["measured_gib"] = peak(step)
        model.zero_grad(set_to_none=True)
    model.grad_checkpointing = False
    model.eval()
    return out


def check_shape(name, shape, device, fix, tiny: bool) -> dict:
    n_q, eval_bs, train_bs, steps, n_gen, n_num = SIZES["tiny" if tiny else "real"]
    args = TOPAArgs(**shape, adapter_len=50, max_feats=T)
    tok = load_tokenizer(os.path.join(fix, "llama3" if args.vocab_size > 32000 else "llama2", "tokenizer.model"))
    builder = PromptBuilder(tok, T)
    eval_items = bench_eval.make_items(builder, bench_eval.nextqa_questions(fix, n_q))
    train_items = bench_train.make_items(builder, fix, train_bs * (steps + 1), ["vqa", "vaq", "qav"])
    collate = TrainCollate()
    train_batches = [collate(train_items[i:i + train_bs]) for i in range(0, len(train_items), train_bs)]
    gen_items = bench_generate.caption_items(tok, MSRVTT, n_gen, torch.Generator().manual_seed(0))
    res, t0 = {"params": {k: v for k, v in shape.items()}}, time.perf_counter()
    got, model = {}, None
    for dtype in ((torch.bfloat16, torch.float32) if tiny else (torch.float32, torch.bfloat16)):
        del model  # the speed checks keep the last: bf16 on GPU, fp32 on CPU (what runs there)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = make_model(args, dtype, device)
        got[dtype] = scores_and_losses(model, eval_items[:n_num], train_batches[0], device)
    res["numerics"] = numerics(got[torch.float32], got[torch.bfloat16])
    res["speed_dtype"] = str(dtype).replace("torch.", "")
    res["sdpa"] = sdpa_backends(model, eval_items[:eval_bs], train_batches[0], gen_items, tok, device)
    res["eval"] = eval_speed(model, eval_items, eval_bs, device)
    n_backbone = sum(p.numel() for n, p in model.named_parameters() if not is_trainable(n))
    peak = next((v for k, v in PEAK_BF16.items() if device.type == "cuda" and k in torch.cuda.get_device_name(device)),
                None)
    res["train"] = train_speed(model, train_batches, device, n_backbone, peak)
    res["generate"] = generation_speed(model, tok, gen_items, device)
    if name in ("llama2_13b", "tiny_llama2"):
        res["memory"] = memory_check(model, args, device, tiny)
    res["seconds"] = time.perf_counter() - t0
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def vit_speed(device, tiny: bool) -> dict:
    """Frames/s of a random ViT-L/14-shaped CLIPVisionModel (fp16 on GPU, fp32 on CPU)."""
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel
    transformers.logging.set_verbosity_error()
    cfg = (CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=224, patch_size=14) if tiny else
           CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=224, patch_size=14, projection_dim=768))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = CLIPVisionModel(cfg).to(device, dtype).eval()
    n = 256 if device.type == "cuda" else 8
    x = torch.randn(n, 3, 224, 224, device=device, dtype=dtype)
    sync = sync_fn(device)
    with torch.no_grad():
        model(pixel_values=x[:8])
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            model(pixel_values=x)
        sync()
    return {"config": "tiny" if tiny else "ViT-L/14", "dtype": str(dtype).replace("torch.", ""), "batch": n,
            "frames_per_s": 3 * n / (time.perf_counter() - t0)}


# ---------------------------------------------------------------- outputs

def fmt(x, p: int = 3) -> str:
    return "-" if x is None else f"{x:.{p}g}" if isinstance(x, float) else str(x)


def mfu(d: dict) -> str:
    return f"{d['tokens_per_s']:.0f} ({fmt(d['mfu'], 2)})"


def markdown(res: dict) -> str:
    lines = [f"GPU check on {res['device']} (torch {res['torch']}), {res['seconds']:.0f} s", "",
             "| shape | scores bf16-fp32 | losses bf16-fp32 | fused-eager fp32 (scores / losses) | SDPA kernels "
             "masked / causal / decode | eval q/s shared / full | train tok/s (MFU) plain / ckpt | gen tok/s b1 "
             "KV / full | gen tok/s b16 KV / full |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["shapes"].items():
        n, s, e, t, g = r["numerics"], r["sdpa"], r["eval"], r["train"], r["generate"]
        kernels = " / ".join(",".join(ops) or "none" for k, ops in s.items() if k != "math_fallback")
        lines.append(f"| {name} | {fmt(n['scores_bf16_vs_fp32'])} | {fmt(n['losses_bf16_vs_fp32'])} | "
                     f"{fmt(n['scores_fused_vs_eager_fp32'])} / {fmt(n['losses_fused_vs_eager_fp32'])} | {kernels} | "
                     f"{e['questions_per_s_shared_prefix']:.1f} / {e['questions_per_s_full']:.1f} | "
                     f"{mfu(t['plain'])} / {mfu(t['grad_checkpointing'])} | "
                     f"{g['batch1_kv_cache_tokens_per_s']:.0f} / {g['batch1_full_tokens_per_s']:.0f} | "
                     f"{g['batch16_kv_cache_tokens_per_s']:.0f} / {g['batch16_full_tokens_per_s']:.0f} |")
    v = res["vit"]
    lines += ["", f"ViT ({v['config']}, {v['dtype']}, batch {v['batch']}): {v['frames_per_s']:.0f} frames/s", ""]
    for name, r in res["shapes"].items():
        for k, m in r.get("memory", {}).items():
            lines.append(f"- {name} peak activation memory, {k}: computed {m['computed_gib']:.3g} GiB, measured "
                         f"{fmt(m['measured_gib'])} GiB")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (CI)")
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    add_fixtures_argument(p)
    p.add_argument("--shapes", default=None, help="comma list (default: every shape of the mode)")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU node, or pass --tiny")
    if args.tiny:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    if args.shapes:
        shapes = {k: shapes[k] for k in args.shapes.split(",")}
    t0 = time.perf_counter()
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
           "torch": torch.__version__, "tiny": args.tiny, "shapes": {}}
    for name, shape in shapes.items():
        res["shapes"][name] = check_shape(name, shape, device, args.fixtures, args.tiny)
        print(f"{name}: {res['shapes'][name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    res["vit"] = vit_speed(device, args.tiny)
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
