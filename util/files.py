"""Atomic file writes: into a temporary file beside the target, fsync, then rename, so a crash never
leaves a half-written file under the final name and the previous file stays intact until the rename.
Files get the permissions a plain `open` would give them (0666 less the umask; `mkstemp` makes 0600),
so the rest of a group on a shared cluster can read checkpoints, features and results."""
import os
import tempfile
from pathlib import Path


def write_text_atomic(text: str, path):
    """`save_atomic` for a text file (result files)."""
    write_atomic(path, lambda f: f.write(text), "w")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write, mode: str = "wb"):
    """`write(file)` into a temporary file beside `path`, fsync, then rename (see `save_atomic`)."""
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
