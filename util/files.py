"""Generic file I/O, the same for checkpoints, features and results.

Writes are atomic: into a temporary file beside the target, fsync, then rename, so a crash never
leaves a half-written file under the final name and the previous file stays intact until the rename.
Files get the permissions a plain `open` would give them (0666 less the umask; `mkstemp` makes 0600),
so the rest of a group on a shared cluster can read checkpoints, features and results.

Reads are safe: `safe_load` is torch.load with weights_only=True (argparse.Namespace the one extra
global), `load_pickled_tensor` reads a tensor written by torch.save or plain pickle.dump without running
arbitrary pickle code. A truncated, empty or foreign file is an error naming it.

A write that fails for want of space is an `OutputError` that says "disk full" and names the file; the
previous file is intact (atomic writes) or, for a file written line by line (`LineWriter`), cut back to
its last whole line. Output folders are prepared (made, checked for writability and room) and locked for
one run by `claim_output_dir` (util/lock.py).
"""
import argparse
import collections
import errno
import io
import os
import pickle
import shutil
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch._utils

from . import dist
from .errors import CheckpointError, ConfigError, DataError, MissingFileError, OutputError, UnsafePickleError
from .lock import LOCK_NAME, OutputLock

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(e: OSError, path) -> OutputError:
    """The one-line error for a write to `path` that failed with `e` (ENOSPC, EDQUOT, EFBIG)."""
    why = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit reached"}[e.errno]
    return OutputError(f"{path}: disk full ({why}); free some space and rerun")


def write_text_atomic(text: str, path):
    """`write_atomic` for a text file (result files)."""
    write_atomic(path, lambda f: f.write(text), "w")


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in FULL:
            raise disk_full(e, path) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj, path):
    """torch.save, atomically (see the module docstring)."""
    write_atomic(path, lambda f: torch.save(obj, f), "wb")


def _write_lines(fd: int, size: int, text: str, path) -> int:
    """Write `text` (whole lines) at `size` of file `fd`; the new size. A failure (disk full, or a
    signal mid-write) cuts the file back to `size`, and an OSError becomes an `OutputError` naming it."""
    data = text.encode("utf-8")
    done = 0
    try:
        while done < len(data):
            done += os.pwrite(fd, data[done:], size + done)
    except BaseException as e:
        os.ftruncate(fd, size)
        if isinstance(e, OSError) and e.errno in FULL:
            raise disk_full(e, path) from None
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return size + len(data)


def append_lines(path, text: str):
    """Append whole lines to `path` (a log): a failed write leaves the file as it was."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        _write_lines(fd, os.fstat(fd).st_size, text, path)
    finally:
        os.close(fd)


class LineWriter:
    """A text file written afresh (or kept as it is, `LineWriter.append`), then appended to in whole lines
    (`write(text)`, text ending in a newline) and flushed at once: what a kill leaves is whole lines. A write
    that fails (disk full) cuts the file back to its last whole line and raises `OutputError` naming it."""

    def __init__(self, path, append: bool = False):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (0 if append else os.O_TRUNC), 0o666)
        self._size = os.fstat(self._fd).st_size

    @classmethod
    def append(cls, path) -> "LineWriter":
        """The file kept as it is (whole lines), and appended to."""
        return cls(path, append=True)

    def write(self, text: str):
        self._size = _write_lines(self._fd, self._size, text, self.path)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepare_output_dir(path, flag: str = "--output_dir", need_bytes: int = 64 << 20, lock_name: str = LOCK_NAME,
                       what: str = None) -> OutputLock:
    """Create `path`, lock it for this run (`<path>/<lock_name>`, util/lock.py), and check that its
    file system has about `need_bytes` free: an output folder that cannot hold the results is an error
    now, not after hours of work. Returns the held lock. `what` names the output in errors."""
    out = Path(path)
    what = what or f"{flag} {path}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what}: cannot write there ({e.strerror or e})") from None
    lock = OutputLock(out / lock_name, what)
    try:
        check_free_space(out, need_bytes, what)
    except ConfigError:
        lock.release()
        raise
    return lock


def check_free_space(folder, need_bytes: int, what: str):
    """A rough check: `folder`'s file system has `need_bytes` free (ConfigError otherwise)."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ConfigError(f"{what}: only {free / 2**20:.1f} MiB free on its file system, the run needs about "
                          f"{need_bytes / 2**20:.0f} MiB")


@contextmanager
def claim_output_dir(path, flag: str = "--output_dir", need_bytes: int = 64 << 20):
    """The run's output folder (a Path), prepared and locked by rank 0 (`prepare_output_dir`) until the
    block ends; an error there ends every rank with the same line."""
    lock = dist.on_main(prepare_output_dir, path, flag, need_bytes)
    try:
        yield Path(path)
    finally:
        if lock is not None:
            lock.release()


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
