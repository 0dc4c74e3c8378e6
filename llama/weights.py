"""Model files a user brings or a run writes: Meta checkpoint folders (1..N model-parallel shards) and
released TOPA checkpoints. Loading is safe (`util.files.safe_load`: nothing but tensors, plain
containers and `argparse.Namespace` is unpickled); saving is atomic (`util.files.save_atomic`).

Backbone weights reach the model through a *weight source* (`MetaShards` here, `llama.hf.HFSafetensors`
for Hugging Face folders, `StateDict` for a dict in memory): `shapes` maps every Meta key to the full
tensor's shape, and `read_into(key, out)` fills a tensor the model has already allocated (any device,
any dtype). The model is never held twice: `build_model` allocates one tensor, fills it, goes on.
"""
import argparse
from pathlib import Path
from typing import Optional

import torch

from util.errors import CheckpointError, MissingFileError
from util.files import nonfinite, safe_load

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
