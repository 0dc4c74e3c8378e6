"""Generic file I/O, the same for checkpoints, features and results.

Writes are atomic: into a temporary file beside the target, fsync, then rename, so a crash never
leaves a half-written file under the final name and the previous file stays intact until the rename.
Files get the permissions a plain `open` would give them (0666 less the umask; `mkstemp` makes 0600),
so the rest of a group on a shared cluster can read checkpoints, features and results.

Reads are safe: `safe_load` is torch.load with weights_only=True (argparse.Namespace the one extra
global), `load_pickled_tensor` reads a tensor written by torch.save or plain pickle.dump without running
arbitrary pickle code. A truncated, empty or foreign file is an error naming it.
"""
import argparse
import collections
import io
import os
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch._utils

from util.errors import CheckpointError, ConfigError, DataError, MissingFileError, UnsafePickleError



def write_text_atomic(text: str, path):
    """`write_atomic` for a text file (result files)."""
    write_atomic(path, lambda f: f.write(text), "w")


def prepare_output_dir(path, flag: str = "--output_dir") -> Path:
    """Create `path` and write (then remove) a file in it: an output folder that cannot hold the results
    is an error now, naming `flag`, not after hours of work."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write, mode: str = "wb"):
    """`write(file)` into a temporary file beside `path`, fsync, then rename (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
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


def save_atomic(obj, path):
    """torch.save, atomically (see the module docstring)."""
    write_atomic(path, lambda f: torch.save(obj, f), "wb")


# ---- safe reads ----

# what torch.load / pickle raise for a truncated, empty or foreign file (never for a good one)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, struct.error,
              zipfile.BadZipFile, UnicodeDecodeError)


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
        raise DataError(f"{path}: expected a pickled tensor, got {type(obj).__name__}")
    return obj
