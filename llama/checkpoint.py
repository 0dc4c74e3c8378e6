"""Files a user brings or a run writes: Meta checkpoint folders (1..N model-parallel shards),
released TOPA checkpoints, pickled tensors (memory.pkl, TextVid features). Loading is safe: nothing
but tensors, plain containers and `argparse.Namespace` is unpickled. Saving is atomic.
"""
import argparse
import collections
import io
import os
import pickle
import tempfile
from pathlib import Path

import torch
import torch._utils

from util.errors import CheckpointError, MissingFileError, UnsafePickleError

# how Meta's model-parallel shards split each tensor; None = replicated in every shard
SHARD_DIM = {"tok_embeddings.weight": 1, "output.weight": 0, "attention.wq.weight": 0,
             "attention.wk.weight": 0, "attention.wv.weight": 0, "attention.wo.weight": 1,
             "feed_forward.w1.weight": 0, "feed_forward.w2.weight": 1, "feed_forward.w3.weight": 0,
             "attention_norm.weight": None, "ffn_norm.weight": None, "norm.weight": None}
IGNORED_KEYS = {"rope.freqs"}  # stored by Meta's Llama-1/2 checkpoints, recomputed here


def shard_dim(key: str):
    """The dim along which shards of Meta tensor `key` are concatenated (None: replicated)."""
    if key in IGNORED_KEYS:
        return None
    for suffix, dim in SHARD_DIM.items():
        if key == suffix or key.endswith("." + suffix):
            return dim
    raise CheckpointError(f"unknown tensor '{key}' in a Meta checkpoint")


def safe_load(path, map_location="cpu", mmap=False):
    """torch.load with weights_only=True; argparse.Namespace is the one extra global allowed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle (only tensors, containers and "
                                     f"argparse.Namespace are allowed): {e}") from None


def load_meta_checkpoint(folder) -> dict:
    """Merge `consolidated.NN.pth` shards of a Meta folder into one state dict (as one process needs)."""
    folder = Path(folder)
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise MissingFileError(f"no consolidated.*.pth in {folder}")
    states = [safe_load(p, mmap=True) for p in shards]
    keys = set(states[0])
    for p, s in zip(shards[1:], states[1:]):
        if set(s) != keys:
            raise CheckpointError(f"{p}: keys differ from {shards[0].name}: {sorted(set(s) ^ keys)[:5]}")
    merged = {}
    for k in sorted(keys - IGNORED_KEYS):
        dim = shard_dim(k)
        parts = [s[k] for s in states]
        merged[k] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return merged


def load_topa_checkpoint(path) -> dict:
    """A released or self-written TOPA checkpoint: dict with `model` (trainable tensors) and more."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a TOPA checkpoint (expected a dict with a 'model' entry)")
    return ckpt


def save_atomic(obj, path):
    """torch.save to a temporary file beside `path`, fsync, then rename: a crash never leaves a
    half-written file under the final name, and the previous file stays intact until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- pickled tensors: torch.save files or plain pickle.dump of a tensor ----

def _storage_from_bytes(b):
    return torch.load(io.BytesIO(b), weights_only=True)


_PICKLE_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _TensorUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def load_pickled_tensor(path) -> torch.Tensor:
    """A tensor saved with torch.save or pickle.dump, loaded without running arbitrary pickle code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"tensor file not found: {path}")
    with open(path, "rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
    try:
        if zip_magic:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with open(path, "rb") as f:
                obj = _TensorUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle: {e}") from None
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: expected a pickled tensor, got {type(obj).__name__}")
    return obj


def load_memory(path, max_rows: int = 1_000_000, dim: int = 768) -> torch.Tensor:
    """memory.pkl: [N, dim] unit-norm text features -> first `max_rows` rows in fp32."""
    mem = load_pickled_tensor(path)
    if mem.ndim != 2 or mem.shape[1] != dim:
        raise CheckpointError(f"{path}: memory must be [N, {dim}] CLIP features, got {list(mem.shape)}")
    return mem[:max_rows].float()
