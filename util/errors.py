"""The project's one error type for bad input, and the entry points' way of reporting it.

`InputError` (and its subclasses) means: something a user brought or asked for is wrong — a missing or
malformed file, row, tensor or flag. Its message names the file (and row / question id / key). The
entry points print it as one line on stderr and exit 1. Every other exception is a bug in this project
and keeps its traceback. `TOPA_TRACEBACK=1` shows the traceback of input errors too.

SIGTERM and Ctrl-C (SIGINT) end an entry point the same way: they first terminate the DataLoader workers
(daemonic children), so no process is left behind, print one line, and unwind the run as SystemExit (open
files are closed whole, finished work is saved), exit status 143 / 130. A KeyboardInterrupt's traceback
would show wherever the interrupt happened to land (often inside the workers' fd-sharing code).
"""
import os
import pickle
import signal
import sys
from typing import Callable


class InputError(Exception):
    """Bad input a user can fix; the message names the file and, where there is one, the row or id."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the run needs does not exist."""


class DataError(InputError, ValueError):
    """Malformed annotations or features."""


class CheckpointError(InputError, ValueError):
    """A model, tokenizer or TOPA checkpoint that does not fit the run."""


class NonFiniteError(InputError, ArithmeticError):
    """A model output (a score, a next-token distribution) that is NaN or Inf: the checkpoint's tensors or
    the precision are at fault, and the item it belongs to gets no answer."""


class TokenizerError(InputError, ValueError):
    """A tokenizer file that cannot be read, or whose pieces do not fit the prompt format."""


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle that would need more than tensors, plain containers and argparse.Namespace."""


class ConfigError(InputError, ValueError):
    """Flags that contradict each other or the data."""


class RequestError(InputError, ValueError, TypeError):
    """A Python API request (engine/api.py) of the wrong type, shape, dtype or value; the message names the
    argument, and in a batched call the request's index. A TypeError too where the type is what is wrong."""


class OutputError(InputError, OSError):
    """An output that cannot be written: a full disk, a read-only folder, a folder another run holds."""


def one_line(e: BaseException) -> str:
    """The message of `e` on one line. An error raised in a DataLoader worker arrives with torch's
    "Caught X in DataLoader worker process N. Original Traceback ..." text around it: the original
    message (after the traceback's last "X: ") is what is kept."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        marker = f"{type(e).__name__}: "
        at = text.rfind(marker)
        if at >= 0:
            text = text[at + len(marker):]
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _end_children():
    """End this process's multiprocessing children (DataLoader workers) now, each by its own SIGTERM
    (which kills a forked child outright, see `_on_sigterm`), instead of at interpreter exit: a worker
    that outlived its reader would print a traceback from its fd-sharing thread. torch's SIGCHLD handler
    would report their ends as worker failures, so it is set aside first, for a handler that does nothing
    (not SIG_DFL: a SIGCHLD already received, as when Ctrl-C or a scheduler signals the whole process group
    and a worker ends first, would then be printed by Python as "Signal 17 ignored due to race condition"
    with a traceback)."""
    import multiprocessing
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(5)


NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


def _on_signal(prog: str, pid: int, hint: Callable[[], str]):
    """SIGTERM and SIGINT in the main process: end the workers, say so on one line (with the entry point's
    `hint`: what is kept and how to continue), and unwind the run as SystemExit(128 + signum) (finally
    blocks run: finished parts are saved; no traceback)."""
    def handler(signum, frame):
        if os.getpid() != pid:  # a forked child (a DataLoader worker): die as without the handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        signal.signal(signum, signal.SIG_IGN)  # once: the unwinding is not interrupted again
        _end_children()
        try:
            said = hint()
        except Exception:  # the stop is what this line reports; a hint that fails (a half-imported module) is left out
            said = ""
        print(f"{prog}: stopped by {NAMES[signum]}" + (f"; {said}" if said else ""), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    return handler


def dry_run(args) -> bool:
    """--dry_run (train.py, eval.py): print the parsed arguments (the scripts' tests read them) and tell the
    caller to run nothing."""
    if getattr(args, "dry_run", False):
        print(vars(args))
        return True
    return False


def run_cli(main, args, prog: str, hint: Callable[[], str] = lambda: ""):
    """`main(args)`; an `InputError` ends the process with one line `prog: error: ...` and exit code 1;
    SIGTERM and SIGINT (Ctrl-C) end the DataLoader workers, print one line and exit with 143 / 130
    (module docstring). `hint()` is the end of that line: what the entry point keeps and how to go on
    (it names files that exist then; "" says nothing more)."""
    before = signal.signal(signal.SIGTERM, _on_signal(prog, os.getpid(), hint))
    before_int = signal.signal(signal.SIGINT, _on_signal(prog, os.getpid(), hint))
    try:
        return main(args)
    except InputError as e:
        if os.environ.get("TOPA_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)
