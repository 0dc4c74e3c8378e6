"""Processes and devices, one home for every entry point: the torchrun environment, this process's
device, the compute dtype a device gets by default, and gathering Python objects. Plain single-process
runs (no RANK/WORLD_SIZE in the environment) need no process group at all."""
import os
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from util.errors import ConfigError, InputError
from util.settings import PRECISIONS

DTYPES = {name: getattr(torch, dtype) for name, dtype in PRECISIONS.items()}


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def check_device(device: str):
    """--device names a device this machine has: auto, cpu, cuda, cuda:N (or another torch device); a CUDA
    device without CUDA is a one-line error now, not a torch assertion later."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def select_device(device: str = "auto") -> torch.device:
    """auto: CUDA when there is a GPU, else the CPU. Under torchrun a CUDA device is this process's GPU
    (LOCAL_RANK), made the current one. A device this machine lacks is a ConfigError (`check_device`)."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or (device.startswith("cuda") and env_world() > 1):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if env_world() > 1:
            torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return torch.device(device)


def init_group(backend: str, timeout: timedelta):
    """Join torchrun's process group (once)."""
    if env_world() > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)


def init_distributed(device: str = "auto"):
    """Returns (rank, world_size, device). Under torchrun: NCCL on CUDA, gloo on CPU."""
    device = select_device(device)
    init_group("nccl" if device.type == "cuda" else "gloo", timedelta(minutes=60))
    return env_rank(), env_world(), device


def resolve_precision(precision: Optional[str], device: torch.device, gpu_default: str = "bf16") -> str:
    """--precision, or the device's default: `gpu_default` on a GPU (bf16 for the LLM; fp16 for CLIP, as
    the published features were made), fp32 on a CPU. bf16 on a GPU without native bf16 (compute
    capability < 8, e.g. V100, T4) is an error that suggests `--precision fp16`: emulated bf16 runs, but
    slowly, and falling back silently would change the run's numerics."""
    asked = precision is not None
    if precision is None:
        precision = gpu_default if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not cuda_bf16_supported(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"{name} ({device}) has no native bf16 support"
                          f"{'' if asked else ' (bf16 is the default on GPU)'}: use --precision fp16 "
                          f"(or --precision fp32)")
    return precision


def resolve_dtype(precision: Optional[str], device: torch.device, gpu_default: str = "bf16") -> torch.dtype:
    """The torch dtype of `resolve_precision`."""
    return DTYPES[resolve_precision(precision, device, gpu_default)]


def cuda_bf16_supported(device: torch.device) -> bool:
    """Native bf16 on this CUDA device (compute capability >= 8, or any ROCm GPU)."""
    if not torch.cuda.is_available():
        return False  # there is no such device: the run fails where it first uses it
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def gather_objects(obj):
    """All ranks' `obj` as a list (rank order); [obj] without a process group."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(params):
    """Rank 0's values of `params` on every rank (a run starts from one state on all ranks)."""
    if is_dist():
        for p in params:
            dist.broadcast(p.data, 0)


def average_gradients(params):
    """Each parameter's gradient := its mean over the ranks, in one all_reduce of the gradients flattened
    in `params`' order (a rank without a gradient for one adds zeros). DDP's arithmetic (x 1/world, then a
    sum), in a layout that never changes: DDP lays its buckets out in the order the gradients arrived in a
    process's first iteration, so on 3 or more ranks (where the sum's order matters) a resumed run summed
    differently from the uninterrupted one. The TOPA gradients are a few MB: one call after backward costs
    what DDP's overlap would save."""
    if not is_dist() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(1.0 / world_size())
    dist.all_reduce(flat)
    for p, g, mean in zip(params, grads, flat.split([g.numel() for g in grads])):
        if p.grad is None:
            p.grad = mean.view_as(p).clone()
        else:
            p.grad.copy_(mean.view_as(p.grad))


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def on_main(fn, *args):
    """`fn(*args)` on rank 0 only (its result there, None elsewhere); an input error there is raised on
    every rank with the same message (so that no rank goes on alone, and every rank ends with one line)."""
    err = out = None
    if is_main():
        try:
            out = fn(*args)
        except InputError as e:
            err = (type(e), str(e))
    err = gather_objects(err)[0]
    if err is not None:
        raise err[0](err[1])
    return out
