"""Training numerics against references written here, not against the trainer: gradient accumulation
(k micro-batches of equal token counts = one batch of their union; a short last cycle = the mean over
the iterations it holds), --clip_grad (the norm after clipping is the limit), an fp16 (GradScaler) and a
bf16 resume that continue bit for bit (the fp16 run's loss scale changed before its checkpoint), the
RNG a resumed run draws from, and the magnitude of TextVid's --variance noise.

Tiny 2-layer Llama of the shared synthetic world (tests/conftest.py), CPU, one thread."""
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

import engine.losses as L
import engine.training as engine
import train
from dataloader.benchmarks import build_mcqa_dataset
from dataloader.textvid import TextVidDataset
from dataloader.train_batches import MCQATrainDataset, TrainCollate
from engine.config import TrainConfig, flat_args
from llama.build import load_topa
from llama.weights import load_topa_checkpoint
from text.prompts import PromptBuilder
from util.schedule import param_groups

from test_train import base_args, log_lines

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ACCUM, PER_BATCH, N_BATCHES = 4, 2, 6   # 6 micro-batches: a full cycle of 4, then a short one of 2
LR, WD = 1e-3, 0.1


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world["root"]


@pytest.fixture(scope="module")
def tiny(world):
    """A fresh TOPA on the world's tiny backbone, gates opened so that every trainable tensor gets a
    gradient; its starting state; the world's NExT-QA train items (vqa + vaq + qav)."""
    cfg = TrainConfig.from_args(train.get_args(base_args(world, world / "unused")))
    torch.manual_seed(0)
    model, tok, _ = load_topa(cfg.model, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            if "gate" in n:
                p.normal_(0.0, 0.5)
    start = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    base = build_mcqa_dataset("nextqa", world / "data", "train", PromptBuilder(tok, 10), train=True)
    return model, start, MCQATrainDataset(base, vaq=True, qav=True)


def reset(model, state):
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(state[n])
    model.zero_grad(set_to_none=True)


def equal_count_items(ds, n):
    """n training items with the same text (so every micro-batch holds the same number of scored tokens
    and frames) and each its own video."""
    first = ds[0]
    return [replace(first, index=i, id=f"item{i}", video=ds[i % len(ds)].video) for i in range(n)]


def union_gradient(model, items, weight_captioning=1.0):
    """The reference: one batch of all `items`, its loss written out (docs/training.md: vqa + weight *
    vaq + qav), backpropagated once."""
    model.zero_grad(set_to_none=True)
    losses = L.TrainStep(model)(TrainCollate()(items))
    (losses["vqa"] + weight_captioning * losses["vaq"] + losses["qav"]).backward()
    grads = {n: p.grad.clone() for n, p in model.trainable_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def make_optimizer(model):
    return torch.optim.AdamW(param_groups(model.trainable_parameters(), WD), lr=LR, betas=(0.9, 0.95))


def record_steps(model, optimizer):
    """Every optimizer step's (parameters, gradients) as the step sees them."""
    seen = []

    def hook(opt, *_):
        seen.append(({n: p.detach().clone() for n, p in model.trainable_parameters()},
                     {n: p.grad.clone() for n, p in model.trainable_parameters()}))
    optimizer.register_step_pre_hook(hook)
    return seen


def cfg_for(world, *extra):
    return TrainConfig.from_args(train.get_args(base_args(
        world, world / "unused", "--dataset", "nextqa", "--vaq", "--qav", "--batch_size", PER_BATCH, "--epochs", 1,
        "--lr", LR, "--warmup_epochs", 0, "--weight_decay", WD, *extra)))


def assert_close(got: dict, want: dict, what: str, rtol=1e-4, atol=1e-7):
    assert got.keys() == want.keys()
    for k, w in want.items():
        torch.testing.assert_close(got[k], w, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what}, {k}: {m}")


def test_accumulation_equals_one_batch_of_the_union_and_a_short_cycle_is_a_mean(world, tiny):
    """6 micro-batches of 2 items with --accum_iter 4: the first step's gradient is that of one batch of
    the 8 items (not 4 times it: AdamW alone would hide the scale), the parameters after it are a plain
    AdamW step on that gradient; the second, short cycle (2 micro-batches) steps with the gradient of one
    batch of its 4 items (the mean over the iterations it holds, not 2/4 of it)."""
    model, start, ds = tiny
    items = equal_count_items(ds, PER_BATCH * N_BATCHES)
    batches = [TrainCollate()(items[i:i + PER_BATCH]) for i in range(0, len(items), PER_BATCH)]
    assert len({b.n_tokens for b in batches}) == 1
    reset(model, start)
    opt = make_optimizer(model)
    steps = record_steps(model, opt)
    engine.train_one_epoch(L.TrainStep(model), model, batches, opt, 0, cfg_for(world, "--accum_iter", ACCUM), "cpu")
    assert len(steps) == 2

    (p1, g1), (p2, g2) = steps
    reset(model, p1)
    want1 = union_gradient(model, items[:PER_BATCH * ACCUM])
    assert_close(g1, want1, "first cycle's gradient")
    reset(model, p2)
    want2 = union_gradient(model, items[PER_BATCH * ACCUM:])
    assert_close(g2, want2, "short last cycle's gradient")
    # the step after the first cycle: AdamW (betas 0.9, 0.95; decay on tensors of ndim >= 2) on the
    # union's gradient at the epoch's first lr (no warmup: the peak)
    reset(model, p1)
    ref = make_optimizer(model)
    for n, p in model.trainable_parameters():
        p.grad = want1[n].clone()
    ref.step()
    assert_close({n: p.detach() for n, p in model.trainable_parameters()}, p2, "parameters after the first step",
                 rtol=1e-5, atol=1e-7)
    assert max((p2[n] - p1[n]).abs().max().item() for n in p1) > 1e-4   # the step moved them
    reset(model, start)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_clip_grad_makes_the_norm_the_limit(world, tiny, precision):
    """--clip_grad c with a gradient of norm > c: the optimizer sees the same direction with norm c
    (fp16: after the GradScaler's unscale)."""
    model, start, ds = tiny
    items = equal_count_items(ds, PER_BATCH)
    batch = TrainCollate()(items)
    reset(model, start)
    want = union_gradient(model, items)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in want.values()])).item()
    limit = norm / 3
    if precision == "fp16":
        cfg = cfg_for(world, "--clip_grad", limit, "--precision", "fp16")
        model16, _, _ = load_topa(cfg.model, torch.device("cpu"), torch.float16)
        with torch.no_grad():
            for n, p in model16.trainable_parameters():
                p.copy_(start[n])
        opt = make_optimizer(model16)
        steps = record_steps(model16, opt)
        engine.train_one_epoch(L.TrainStep(model16), model16, [batch], opt, 0, cfg, "cpu",
                               torch.amp.GradScaler("cpu"))
    else:
        opt = make_optimizer(model)
        steps = record_steps(model, opt)
        engine.train_one_epoch(L.TrainStep(model), model, [batch], opt, 0, cfg_for(world, "--clip_grad", limit), "cpu")
    (_, got), = steps
    got_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got.values()])).item()
    assert got_norm == pytest.approx(limit, rel=1e-5)
    scaled = {n: g * (limit / norm) for n, g in want.items()}
    assert_close(got, scaled, "clipped gradient", rtol=1e-4 if precision == "fp32" else 5e-2,
                 atol=1e-7 if precision == "fp32" else 1e-4)
    reset(model, start)


# ---------------------------------------------------------------- exact resume: grad scaler and RNG

def spy_draws(monkeypatch):
    """At the start of every epoch, one draw from each global RNG (torch, numpy, python): what a
    model with dropout or a random augmentation would draw next."""
    draws, real = [], engine.train_one_epoch

    def spy(step, model, loader, optimizer, epoch, *a, **k):
        draws.append((epoch, torch.rand(3).tolist(), np.random.rand(), random.random()))
        return real(step, model, loader, optimizer, epoch, *a, **k)
    monkeypatch.setattr(engine, "train_one_epoch", spy)
    return draws


@pytest.fixture(scope="module")
def opened_start(world, tiny, tmp_path_factory):
    """The fixture's TOPA weights (gates open) as a checkpoint to --finetune from."""
    _, start, _ = tiny
    cfg = TrainConfig.from_args(train.get_args(base_args(world, world / "unused")))
    path = tmp_path_factory.mktemp("start") / "start.pth"
    torch.save({"model": start, "args": flat_args(cfg)}, path)
    return path


class HighScaler(torch.amp.GradScaler):
    """A GradScaler whose first scale (2**20, not 2**16) overflows this model's fp16 backward: the run
    skips its first steps, halving the scale each time, then trains, as a run whose gradients grow does."""

    def __init__(self, device="cuda", init_scale=2.0 ** 20, **kw):
        super().__init__(device, init_scale=init_scale, **kw)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_resume_is_bit_exact_with_scaler_and_rng(world, opened_start, tmp_path, monkeypatch, precision):
    """Finetuning in fp16 (GradScaler) / bf16: 2 epochs straight (A) and 1 epoch, then --resume for the
    second (B) give the same parameters bit for bit, the same scaler state, the same log lines, and the
    same next random draws at the start of the resumed epoch. In fp16 the scale changed before the
    checkpoint (skipped steps), so a resume that started from a fresh scaler would differ."""
    monkeypatch.setattr(torch.amp, "GradScaler", HighScaler)
    common = ["--dataset", "nextqa", "--vaq", "--qav", "--batch_size", 2, "--epochs", 2, "--lr", 1e-3,
              "--warmup_epochs", 0, "--eval_datasets", "none", "--log_every", 1]
    start = ["--finetune", "--resume", opened_start]
    a, b = tmp_path / "A", tmp_path / "B"
    draws = spy_draws(monkeypatch)
    train.main(train.get_args(base_args(world, a, *common, *start) + ["--precision", precision]))
    straight = list(draws)
    draws.clear()
    train.main(train.get_args(base_args(world, b, *common, *start, "--stop_after", 1) + ["--precision", precision]))
    train.main(train.get_args(base_args(world, b, *common, "--resume", b / "checkpoint_0.pth")
                              + ["--precision", precision]))
    resumed = list(draws)

    mid = load_topa_checkpoint(b / "checkpoint_0.pth")
    ca, cb = load_topa_checkpoint(a / "checkpoint_1.pth"), load_topa_checkpoint(b / "checkpoint_1.pth")
    if precision == "fp16":
        assert mid["scaler"]["scale"] < 2.0 ** 20                     # the scale changed before the checkpoint
        assert 1 <= log_lines(a, "epoch")[0]["train_skipped_steps"] < log_lines(a, "epoch")[0]["train_steps"]
        assert ca["scaler"] == cb["scaler"]
    else:
        assert mid["scaler"] is None and ca["scaler"] is None
    assert ca["model"].keys() == cb["model"].keys()
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), precision
    assert not all(torch.equal(ca["model"][k], mid["model"][k]) for k in ca["model"])   # the second epoch trained
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert log_lines(a, "iter") == log_lines(b, "iter")
    # the draws at the start of epoch 1: the resumed run continues the straight run's random streams
    assert [d[0] for d in straight] == [0, 1] and [d[0] for d in resumed] == [0, 1]
    assert resumed[1] == straight[1]


# ---------------------------------------------------------------- TextVid's --variance noise

@pytest.mark.parametrize("variance", [1e-4, 0.01])
def test_textvid_noise_has_the_standard_deviation_sqrt_variance(world, tiny_world, variance):
    """--variance v adds Gaussian noise of standard deviation sqrt(v) per feature dimension to each
    (unit-norm) text frame, then renormalises (docs/training.md). Undoing the renormalisation (scaling
    the noisy row back to a unit component along the clean one) leaves the noise orthogonal to the
    clean row, whose empirical std over many rows and epochs is sqrt(v), within 3%."""
    from text.tokenizer import load_tokenizer
    builder = PromptBuilder(load_tokenizer(tiny_world["tokenizer"]), 10)
    clean_ds = TextVidDataset(world / "data", builder, seed=0)
    noisy_ds = TextVidDataset(world / "data", builder, seed=0, variance=variance)
    noise = []
    for epoch in range(4):
        for i in range(len(clean_ds)):
            clean, noisy = clean_ds[(epoch, i, "vqa")].video, noisy_ds[(epoch, i, "vqa")].video
            real = clean.norm(dim=-1) > 0                             # fitted rows (not the zero padding)
            c, f = clean[real], noisy[real]
            assert torch.allclose(f.norm(dim=-1), torch.ones(len(f)), atol=1e-5)
            noise.append(f / (f * c).sum(-1, keepdim=True) - c)
    noise = torch.cat(noise)
    assert noise.numel() > 100_000
    std = noise.std().item()
    assert std == pytest.approx(math.sqrt(variance), rel=0.03), (std, math.sqrt(variance))
    assert abs(noise.mean().item()) < 0.05 * math.sqrt(variance)

