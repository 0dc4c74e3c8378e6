"""Training checkpoints in the released layout plus what an exact `--resume` needs, and resuming.

    {model: trainable tensors only (the released key names), optimizer, epoch, scaler,
     args (argparse.Namespace of the flags), config (plain nested dicts), param_names, rng, sampler, best}

Everything is a tensor, a plain container or an `argparse.Namespace`, so the file loads with
`llama.checkpoint.load_topa_checkpoint` (weights_only=True). Files are written atomically
(`save_atomic`); `checkpoint_last.pth` / `checkpoint_best.pth` are atomically replaced hard links to the
epoch's file (a copy where the file system has no hard links).
"""
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from llama.checkpoint import save_atomic
from util import dist
from util.errors import CheckpointError
from util.schedule import param_groups

from .config import config_dict, flat_args


def checkpoint_name(epoch: int) -> str:
    """`checkpoint_{epoch}.pth`, the original codebase's name (e.g. checkpoint_19.pth after 20 epochs)."""
    return f"checkpoint_{epoch}.pth"


# ---- RNG states as tensors / plain containers ----

def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def restore_rng(state: Optional[dict]):
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---- files ----

def link_atomic(src: Path, dst: Path):
    """Make `dst` name the same file as `src`, atomically (a crash leaves the old `dst` or the new one)."""
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here: an fsynced copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def training_state(model, optimizer, scaler, epoch: int, cfg, sampler_state: Optional[dict] = None,
                   best: Optional[dict] = None) -> dict:
    names = [n for n, _ in model.trainable_parameters()]
    return {
        "model": {n: p.detach().to("cpu", copy=True) for n, p in model.trainable_parameters()},
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "args": flat_args(cfg),
        "config": config_dict(cfg),
        "param_names": names,
        "rng": capture_rng(),
        "sampler": sampler_state,
        "best": best,
    }


def save_checkpoint(output_dir, state: dict, also: tuple = ("last",)) -> Path:
    """Write `checkpoint_{epoch}.pth` atomically, then point `checkpoint_<name>.pth` at it for each
    name in `also` ("last", "best")."""
    out = Path(output_dir)
    path = out / checkpoint_name(state["epoch"])
    save_atomic(state, path)
    for name in also:
        link_atomic(path, out / f"checkpoint_{name}.pth")
    return path


def check_optimizer_state(ckpt: dict, model, source: str):
    """The saved optimizer state must belong to these parameters, in this order (an optimizer state
    written by another codebase may order its parameters differently: --finetune loads weights only)."""
    if not ckpt.get("optimizer") or "param_groups" not in ckpt["optimizer"]:
        raise CheckpointError(f"{source}: has no optimizer state to continue from; --finetune loads its weights only")
    names = [n for n, _ in model.trainable_parameters()]
    saved = ckpt.get("param_names")
    if saved is not None and list(saved) != names:
        raise CheckpointError(f"{source}: its optimizer state is for parameters {list(saved)[:3]}..., this model "
                         f"trains {names[:3]}...; resume with --finetune to load the weights only")
    ids = [i for g in ckpt["optimizer"]["param_groups"] for i in g["params"]]
    ours = [p for g in param_groups(model.trainable_parameters(), 0.0) for p in g["params"]]
    if len(ids) != len(ours):
        raise CheckpointError(f"{source}: optimizer state has {len(ids)} parameters, the model trains "
                         f"{len(ours)}; resume with --finetune to load the weights only")
    for i, p in zip(ids, ours):
        saved_shape = tuple(ckpt["optimizer"]["state"].get(i, {}).get("exp_avg", p).shape)
        if saved_shape != tuple(p.shape):
            raise CheckpointError(f"{source}: optimizer state of parameter {i} has shape {saved_shape}, the "
                             f"model's is {tuple(p.shape)}; resume with --finetune to load the weights only")


def resume_training(ckpt: dict, source: str, model, optimizer, scaler, sampler, weight_decay: float):
    """Continue the run that wrote `ckpt` exactly: optimizer (weight decay from the flags), grad scaler,
    RNG and epoch. Returns (first epoch to run, best so far). Warns when the data setup differs (the
    data order then will not match the original run's)."""
    check_optimizer_state(ckpt, model, source)
    optimizer.load_state_dict(ckpt["optimizer"])
    for g, fresh in zip(optimizer.param_groups, param_groups([], weight_decay)):
        g["weight_decay"] = fresh["weight_decay"]
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt.get("rng"))
    saved, now = ckpt.get("sampler") or {}, sampler.state_dict()
    diff = {k: (saved[k], now[k]) for k in ("seed", "n", "batch_size", "world_size") if k in saved and saved[k] != now[k]}
    if diff and dist.is_main():
        print(f"warning: resuming with a different data setup {diff}: the data order will not match the "
              "original run's", flush=True)
    if dist.is_main():
        print(f"resumed {source}: epoch {ckpt['epoch']} done, continuing at epoch {int(ckpt['epoch']) + 1}", flush=True)
    return int(ckpt["epoch"]) + 1, ckpt.get("best")
