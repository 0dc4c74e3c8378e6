"""Files a user brings or a run writes: Meta checkpoint folders (1..N model-parallel shards),
released TOPA checkpoints, pickled tensors (memory.pkl, TextVid features). Loading is safe: nothing
but tensors, plain containers and `argparse.Namespace` is unpickled. Saving is atomic.

Backbone weights reach the model through a *weight source* (`MetaShards` here, `llama.hf.HFSafetensors`
for Hugging Face folders, `StateDict` for a dict in memory): `shapes` maps every Meta key to the full
tensor's shape, and `read_into(key, out)` fills a tensor the model has already allocated (any device,
any dtype). The model is never held twice: `build_model` allocates one tensor, fills it, goes on.
"""
import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch._utils

from util.files import write_atomic
from util.errors import CheckpointError, DataError, MissingFileError, UnsafePickleError

# what torch.load / pickle raise for a truncated, empty or foreign file (never for a good one)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, struct.error,
              zipfile.BadZipFile, UnicodeDecodeError)

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
    """torch.load with weights_only=True; argparse.Namespace is the one extra global allowed. A file
    that torch cannot read (truncated, empty, not written by torch.save) is a CheckpointError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle (only tensors, containers and "
                                     f"argparse.Namespace are allowed): {e}") from None
    except UNREADABLE as e:
        raise CheckpointError(f"{path}: cannot be read as a torch file (truncated or corrupt?): "
                              f"{type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def nonfinite(t: torch.Tensor) -> Optional[Tuple[Tuple[int, ...], float]]:
    """(index, value) of the first NaN or Inf element of a floating-point tensor, or None."""
    if not t.is_floating_point():
        return None
    bad = ~torch.isfinite(t)
    if not bad.any():
        return None
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return idx, t[idx].item()


class StateDict:
    """A state dict already in memory as a weight source (tests, benchmarks)."""

    def __init__(self, state: dict):
        self.state = state
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}

    def read_into(self, key: str, out: torch.Tensor):
        out.copy_(self.state[key])


class MetaShards:
    """The `consolidated.NN.pth` shards of a Meta folder as a weight source, read without merging.

    Every shard is opened with `torch.load(mmap=True, weights_only=True)`: nothing is read until a
    tensor is copied, and what is read is the file's page cache (shared by the processes of a node and
    dropped by the kernel under pressure), not the process's own memory. `read_into(key, out)` copies
    each shard's slice straight into its place in `out` (`out.narrow(dim, offset, size)`, the split dims
    of `SHARD_DIM`), so a load needs no host memory beyond one slice in transit."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = sorted(self.folder.glob("consolidated.*.pth"))
        if not self.files:
            raise MissingFileError(f"no consolidated.*.pth in {self.folder}")
        self.states = [safe_load(p, mmap=True) for p in self.files]
        for p, s in zip(self.files, self.states):
            if not isinstance(s, dict) or not all(isinstance(v, torch.Tensor) for v in s.values()):
                raise CheckpointError(f"{p}: not a Meta checkpoint shard (expected a dict of tensors)")
        keys = set(self.states[0])
        for p, s in zip(self.files[1:], self.states[1:]):
            if set(s) != keys:
                raise CheckpointError(f"{p}: keys differ from {self.files[0].name}: {sorted(set(s) ^ keys)[:5]}")
        self.shapes = {k: self._merged_shape(k) for k in sorted(keys - IGNORED_KEYS)}

    def _merged_shape(self, key: str) -> tuple:
        """The full tensor's shape: slice sizes summed along the split dim; every other dim must agree."""
        dim = shard_dim(key)
        shapes = [tuple(s[key].shape) for s in self.states]
        rest = {sh[:dim] + sh[dim + 1:] if dim is not None else sh for sh in shapes}
        if len(rest) != 1 or (dim is not None and dim >= len(shapes[0])):
            raise CheckpointError(f"{self.folder}: the shards of '{key}' do not fit together: "
                                  f"{', '.join(f'{p.name} {list(sh)}' for p, sh in zip(self.files, shapes))}")
        if dim is None or len(shapes) == 1:
            return shapes[0]
        full = list(shapes[0])
        full[dim] = sum(sh[dim] for sh in shapes)
        return tuple(full)

    def read_into(self, key: str, out: torch.Tensor):
        dim = shard_dim(key)
        if dim is None or len(self.states) == 1:
            out.copy_(self.states[0][key])
            return
        offset = 0
        for s in self.states:
            part = s[key]
            out.narrow(dim, offset, part.shape[dim]).copy_(part)
            offset += part.shape[dim]


def load_meta_checkpoint(folder) -> dict:
    """Merge the shards of a Meta folder into one state dict in host memory (the whole model at once;
    for inspection and conversion: `build_model` streams from `MetaShards` instead)."""
    src = MetaShards(folder)
    merged = {}
    for k in src.shapes:
        dim = shard_dim(k)
        parts = [s[k] for s in src.states]
        merged[k] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return merged


def load_topa_checkpoint(path) -> dict:
    """A released or self-written TOPA checkpoint: dict with `model` (trainable tensors) and more.
    Every `model` entry must be a tensor of finite values (a NaN or Inf is an error naming the key)."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a TOPA checkpoint (expected a dict with a 'model' dict of tensors)")
    for key, t in ckpt["model"].items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: 'model' entry '{key}' is a {type(t).__name__}, not a tensor")
        bad = nonfinite(t)
        if bad is not None:
            raise CheckpointError(f"{path}: tensor '{key}' holds a non-finite value ({bad[1]} at index "
                                  f"{list(bad[0])}); the checkpoint is broken (a diverged run?)")
    return ckpt


def recorded_flags(ckpt: dict) -> Optional[dict]:
    """The flags a TOPA checkpoint records, by flag name, or None when it records none: its `args`
    (an argparse.Namespace; the original code's and ours, with `--llama2`/`--llama3` as booleans),
    else the plain nested dicts of `config` flattened."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return None
    flat = {}

    def walk(d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            elif k == "family":
                flat["llama2"], flat["llama3"] = v == "llama2", v == "llama3"
            else:
                flat[k] = v
    walk(config)
    return flat


def save_atomic(obj, path):
    """torch.save to a temporary file beside `path`, fsync, then rename: a crash never leaves a
    half-written file under the final name, and the previous file stays intact until the rename. The
    file gets the permissions a plain `open` would give it (0666 less the umask), so the rest of a
    group on a shared cluster can read checkpoints and features."""
    write_atomic(path, lambda f: torch.save(obj, f), "wb")


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
            raise UnsafePickleError(f"global '{module}.{name}' is not allowed") from None


def load_pickled_tensor(path) -> torch.Tensor:
    """A tensor saved with torch.save or pickle.dump, loaded without running arbitrary pickle code.
    A truncated, empty or foreign file is a DataError naming it."""
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
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle: {e}") from None
    except pickle.UnpicklingError as e:
        if zip_magic:  # torch's weights-only unpickler refused a global
            raise UnsafePickleError(f"{path}: refused to unpickle: {_first_line(e)}") from None
        raise DataError(f"{path}: not a readable pickled tensor (truncated or corrupt?): {e}") from None
    except UNREADABLE as e:
        raise DataError(f"{path}: not a readable pickled tensor (truncated, empty or corrupt?): "
                        f"{type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: expected a pickled tensor, got {type(obj).__name__}")
    return obj


def load_memory(path, max_rows: int = 1_000_000, dim: int = 768) -> torch.Tensor:
    """memory.pkl: [N, dim] unit-norm text features -> the first `max_rows` rows, stored in fp16
    (1M rows: 1.5 GB instead of 3.1 GB in fp32). `project_to_memory` does its math in fp32, chunk by
    chunk; rounding unit-norm rows to fp16 moves each element by at most 2^-11 of its value (below
    2^-14 in magnitude, fp16's normal range: by at most 2^-25). A NaN or Inf in those rows is an error
    naming the row."""
    if not os.path.isfile(path):
        raise MissingFileError(f"memory file not found: {path} (--memory_path; default <data_root>/textvid/memory.pkl)")
    mem = load_pickled_tensor(path)
    if mem.ndim != 2 or mem.shape[1] != dim or mem.shape[0] == 0:
        raise CheckpointError(f"{path}: memory must be [N, {dim}] CLIP features (N >= 1), got {list(mem.shape)}")
    if not mem.is_floating_point():
        raise CheckpointError(f"{path}: memory must hold float features, got {mem.dtype}")
    out = mem[:max_rows].to(torch.float16)
    bad = nonfinite(out)
    if bad is not None:
        raise DataError(f"{path}: memory row {bad[0][0]} holds a non-finite value ({bad[1]})")
    if out.untyped_storage().nbytes() > out.nbytes:  # an fp16 view of a longer file: keep only its rows
        out = out.clone()
    return out
