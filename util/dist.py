"""torchrun environment: init, rank helpers, gathering Python objects. Plain single-process runs
(no RANK/WORLD_SIZE in the environment) need no process group at all."""
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(device: str = "auto"):
    """Returns (rank, world_size, device). Under torchrun: NCCL on CUDA, gloo on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=timedelta(minutes=60))
    elif device == "cuda":
        device = "cuda:0"
    return rank, world, torch.device(device)


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


def cleanup():
    if is_dist():
        dist.destroy_process_group()
