"""One writer per output: an exclusive `flock` on a lock file, held for the whole run.

    with OutputLock(folder / LOCK_NAME, "--output_dir " + str(folder)):
        ...  # the only process writing there

The kernel drops the lock with the last file descriptor, however the process ends (exit, exception,
SIGKILL, a crash), so a lock left by a dead run never blocks the next one; the lock file stays (it is
never removed: removing it would let two runs lock two different files). A second run that finds the
lock held is refused at once with the holder's pid and command, which the holder writes into the file;
with `wait=True` (a shared cache that the first process builds and the others then use, e.g. the TextVid
index) it says whom it waits for, on one line, and waits. Under torchrun rank 0 takes the lock (see
`util.dist.on_main`) and holds it until every rank is done.
"""
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError

LOCK_NAME = ".topa.lock"


class OutputLock:
    """An exclusive lock on `path` (created if needed); `what` names the output in the refusal (or in the
    line saying whom it waits for, with `wait`)."""

    def __init__(self, path, what: str, wait: bool = False):
        self.path, self._fd = Path(path), None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"{what}: cannot write there ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                os.close(fd)
                raise ConfigError(f"{what} is in use by another run ({holder}); wait for it to end or stop it, "
                                  "or choose another folder") from None
            print(f"{what}: waiting for another run ({holder})", file=sys.stderr, flush=True)
            _wait(fd, what, self.path)
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"{what}: cannot lock {self.path} ({e.strerror or e})") from None
        self._fd = fd
        record = {"pid": os.getpid(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


def _wait(fd: int, what: str, path: Path):
    """Block until the lock on `fd` is ours; `fd` is closed if that fails (or a signal ends the wait)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        os.close(fd)
        raise ConfigError(f"{what}: cannot lock {path} ({e.strerror or e})") from None
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> str:
    """'pid N: command' from a held lock file (read as its holder wrote it)."""
    try:
        rec = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return f"pid {rec['pid']}: {rec['command']}, since {rec['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
