"""Runs that cannot collide and faults that lose nothing, end to end with eval.py / train.py as
processes on the tiny synthetic world: one writer per output folder (a second run is refused at once
with the first one's pid; a dead run's lock never blocks), SIGTERM leaves no worker behind and only
whole lines, a full disk cuts the predictions back to whole lines with a one-line "disk full" error."""
import csv
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util.errors import ConfigError
from util.files import prepare_output_dir
from util.lock import LOCK_NAME, OutputLock

REPO = Path(__file__).resolve().parents[1]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "TOPA_TRACEBACK"):
        e.pop(k, None)
    return e


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """The tiny world plus data/ with a long NExT-QA val (the val questions repeated to 600), so that an
    evaluation lasts long enough to be raced, stopped or starved."""
    root = tiny_world["root"]
    data = tmp_path_factory.mktemp("long") / "data"
    (data / "nextqa").mkdir(parents=True)
    with open(root / "data" / "nextqa" / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(data / "nextqa" / "val.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        for i in range(600):
            w.writerow(dict(rows[i % len(rows)], qid=str(i)))
    os.symlink(root / "data" / "nextqa" / "clipvitl14.pth", data / "nextqa" / "clipvitl14.pth")
    os.symlink(root / "data" / "textvid", data / "textvid")
    return {"root": root, "data": data}


def eval_args(world, out, *extra):
    return [str(REPO / "eval.py"), "--llama_model_path", str(world["root"] / "pretrained" / "llama2"),
            "--model", "tiny", "--data_root", str(world["data"]), "--output_dir", str(out), "--device", "cpu",
            "--precision", "fp32", "--adapter_len", "4", "--batch_size", "1", "--num_workers", "0",
            *map(str, extra)]


def train_args(world, out, *extra):
    return [str(REPO / "train.py"), "--llama_model_path", str(world["root"] / "pretrained" / "llama2"),
            "--model", "tiny", "--data_root", str(world["root"] / "data"), "--output_dir", str(out),
            "--device", "cpu", "--precision", "fp32", "--num_workers", "0", "--no_tensorboard",
            "--adapter_len", "4", "--textvid", "--batch_size", "2", "--epochs", "1", "--max_seq_len", "60",
            "--eval_datasets", "none", *map(str, extra)]


def start(args, **kw):
    return subprocess.Popen([sys.executable] + args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for(cond, what: str, timeout: float = 120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def holds_lock(folder: Path, pid: int) -> bool:
    try:
        return json.loads((folder / LOCK_NAME).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def one_error_line(stderr: str, prog: str) -> str:
    """The last line of stderr, which must be the run's one error line (and no traceback before it)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines[-1].startswith(f"{prog}: error: "), stderr[-3000:]
    return lines[-1]


def children(pid: int):
    """Live processes whose parent is `pid` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


# ---- the lock itself ----

def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    with OutputLock(tmp_path / LOCK_NAME, f"--output_dir {tmp_path}"):
        with pytest.raises(ConfigError, match=rf"--output_dir {tmp_path} is in use by another run \(pid {os.getpid()}"):
            prepare_output_dir(tmp_path)
    prepare_output_dir(tmp_path).release()  # released: free again
    # a holder killed with SIGKILL leaves the file, not the lock
    code = (f"from util.lock import OutputLock; lock = OutputLock({str(tmp_path / LOCK_NAME)!r}, 'x'); "
            "print('held', flush=True); input()")
    p = subprocess.Popen([sys.executable, "-c", code], env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=rf"pid {p.pid}: "):
        prepare_output_dir(tmp_path)
    p.kill()
    p.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid   # stale record, no lock
    prepare_output_dir(tmp_path).release()


# ---- two runs, one folder ----

def test_two_evaluations_into_one_folder(world, tmp_path):
    """The second eval.py is refused at once, naming the first one's pid and command; the first finishes
    with a predictions file of its own lines only."""
    out = tmp_path / "out"
    first = start(eval_args(world, out))
    try:
        wait_for(lambda: holds_lock(out, first.pid), "the first run's lock")
        first.send_signal(signal.SIGSTOP)   # hold it mid-run: a second run that waited for it would never end
        second = subprocess.run([sys.executable] + eval_args(world, out, "--seed", "1"), env=env(),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        line = one_error_line(second.stderr, "eval.py")
        assert f"--output_dir {out} is in use by another run (pid {first.pid}: " in line and "eval.py" in line
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    preds = [json.loads(line) for line in open(out / "predictions_nextqa_val.jsonl")]
    assert [p["qid"].rsplit("_", 1)[1] for p in preds] == [str(i) for i in range(600)]


def test_two_trainings_into_one_folder(world, tmp_path):
    """A train.py run into a folder another train.py holds is refused at once (the second used to train
    too, both writing log.jsonl), --overwrite included; the first run, held while the second tried, then
    finishes alone. Event-driven: the second starts once the first holds the folder's lock."""
    out = tmp_path / "out"
    first = start(train_args(world, out))
    try:
        wait_for(lambda: holds_lock(out, first.pid) or first.poll() is not None, "the first run's lock")
        assert first.poll() is None, first.communicate()[1][-2000:]
        first.send_signal(signal.SIGSTOP)
        for extra in ([], ["--overwrite"]):
            second = subprocess.run([sys.executable] + train_args(world, out, *extra), env=env(), capture_output=True,
                                    text=True, timeout=300)
            assert second.returncode == 1, second.stderr[-2000:]
            assert f"is in use by another run (pid {first.pid}: " in one_error_line(second.stderr, "train.py")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    epochs = [r for r in map(json.loads, open(out / "log.jsonl")) if r.get("type") == "epoch"]
    assert len(epochs) == 1 and (out / "checkpoint_0.pth").is_file()


# ---- signals ----

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_ends_eval_and_its_workers(world, tmp_path, sig):
    """SIGTERM (or Ctrl-C's SIGINT) to an eval.py with DataLoader workers: it exits at once, no worker is
    left, and the predictions file holds whole lines (as after SIGKILL)."""
    out = tmp_path / "out"
    args = eval_args(world, out)
    args[args.index("--num_workers") + 1] = "2"
    p = start(args)
    preds = out / "predictions_nextqa_val.jsonl"
    wait_for(lambda: preds.is_file() and preds.stat().st_size > 0, "the first predictions")
    workers = children(p.pid)
    assert len(workers) >= 2
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert [w for w in workers if alive(w)] == []
    assert p.returncode == 128 + sig, err[-2000:]
    assert f"stopped by {'SIGTERM' if sig == signal.SIGTERM else 'SIGINT'}" in err and "Traceback" not in err, \
        err[-3000:]
    text = preds.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    assert not list(out.glob("accuracy_*"))


# The scheduler's or the terminal's way: a signal to the whole process group reaches the DataLoader workers
# too, and a worker may end (SIGCHLD) before the main process has run its SIGTERM handler. Both signals are
# made pending together here (blocked, then released), so the order is the race's bad one every time.
GROUP_STOP = """
import multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from util.errors import run_cli

def main(args):
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)   # a handler of its own, as torch's DataLoader has
    child = multiprocessing.Process(target=time.sleep, args=(60,))
    child.start()
    both = {signal.SIGCHLD, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, both)
    os.kill(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)   # it has ended; its SIGCHLD is pending
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    time.sleep(30)

run_cli(main, None, "prog", hint=lambda: sys.argv[2])
"""


def test_sigterm_with_a_worker_already_ended_prints_one_line(tmp_path):
    """SIGTERM handled while a worker's SIGCHLD is pending: one line, exit 143. With SIGCHLD reset to SIG_DFL
    by the handler, Python printed "Signal 17 ignored due to race condition" with a traceback (5 of 12 group
    SIGTERMs to a train.py with 2 workers)."""
    p = subprocess.run([sys.executable, "-c", GROUP_STOP, str(REPO), "the hint"], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode, p.stderr) == (143, "prog: stopped by SIGTERM; the hint\n")


def test_a_failing_stop_hint_leaves_the_line_without_it(tmp_path):
    """A hint that raises (a module half-imported when the signal came) is left out, not a traceback."""
    script = GROUP_STOP.replace('hint=lambda: sys.argv[2]', 'hint=lambda: [][0]')
    p = subprocess.run([sys.executable, "-c", script, str(REPO), ""], env=env(), capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stderr) == (143, "prog: stopped by SIGTERM\n")


def test_train_stop_hint_imports_no_torch(tmp_path):
    """train.py's hint runs in the signal handler, possibly while `import torch` is under way: it must not
    import torch itself (it used to: SIGTERM in the first seconds printed a circular-import traceback)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import train; print(train.stop_hint(sys.argv[2], False)); "
            "print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path)], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert p.stdout.splitlines() == ["no checkpoint was written: start over with --overwrite (deletes the stopped "
                                     "run's files)", "False"], p.stderr


# ---- a full disk ----

def _limit_file_size(n: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return preexec


def test_disk_full_during_evaluation_keeps_whole_lines(world, tmp_path):
    """Writes past the file-size limit fail (EFBIG, as ENOSPC on a full disk): eval.py ends with one
    line saying "disk full" and naming the file, which holds whole lines only."""
    out = tmp_path / "out"
    limit = 20000
    p = subprocess.run([sys.executable] + eval_args(world, out), env=env(), capture_output=True, text=True,
                       timeout=600, preexec_fn=_limit_file_size(limit))
    assert p.returncode == 1, p.stderr[-2000:]
    preds = out / "predictions_nextqa_val.jsonl"
    line = one_error_line(p.stderr, "eval.py")
    assert "disk full" in line and str(preds) in line
    text = preds.read_text()
    assert 0 < len(text) <= limit and text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["qid"].rsplit("_", 1)[1] for r in rows] == [str(i) for i in range(len(rows))]


def test_line_writer_cuts_back_to_the_last_whole_line(tmp_path):
    """In a process whose files may not exceed 100 bytes: the line that does not fit is not left half."""
    code = ("import sys; from util.files import LineWriter\n"
            "w = LineWriter(sys.argv[1])\n"
            "try:\n"
            "    for i in range(100): w.write('x' * 30 + '\\n')\n"
            "except Exception as e: print(type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.jsonl")], env=env(), capture_output=True,
                       text=True, preexec_fn=_limit_file_size(100))
    assert p.stdout.startswith("OutputError") and "disk full" in p.stdout and "f.jsonl" in p.stdout, p.stderr
    assert (tmp_path / "f.jsonl").read_text() == ("x" * 30 + "\n") * 3


def test_torchrun_ranks_end_with_the_same_line(world, tmp_path):
    """Under torchrun a write that fails on rank 0 (a full disk while streaming predictions) ends both
    ranks with the same one line; the other rank used to die in a gloo collective with a traceback."""
    out = tmp_path / "out"
    args = eval_args(world, out)
    args[args.index("--batch_size") + 1] = "4"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + args,
                       env=env(), capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(20000))
    assert p.returncode != 0
    text = p.stderr.replace("\r", "\n")
    lines = re.findall(r"eval\.py: error: [^\n]*", text)   # a rank's line may follow the other's progress bar
    assert len(lines) == 2 and lines[0] == lines[1], text[-3000:]
    assert "disk full" in lines[0] and "predictions_nextqa_val.jsonl" in lines[0]
    for bad in ("gloo", "Connection closed", "Connection reset", "RuntimeError", "DistBackendError"):
        assert bad not in text, text[-3000:]
