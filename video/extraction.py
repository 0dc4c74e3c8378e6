"""The run of an extraction task, the same for videos and text: which processes do which units, what
is skipped on resume, and what happens to the ones that fail.

  run_task(task, args, procs, encoder) -> exit status:
     1. every process checks the existing results' settings; process 0 deletes them with --overwrite;
     1b. process 0 locks the output (one run writes it; util/lock.py) and checks that it is writable
        and that its file system has room for it (roughly);
     2. units come in groups of `task.group` consecutive units (`Batcher`: encoded together, in
        batches that depend only on the group's data); groups whose keys are all done (in the output,
        or in the parts of an interrupted run) are skipped, the others are done again whole;
     3. process r of N (torchrun) takes every N-th remaining group and runs `task.process` on them,
        which hands each group's features to the output as the group ends (a reading error of any kind
        is a failure of that unit, never the end of the run);
     4. process 0 lists failures (`failures_<dataset>.jsonl` beside the output: key, path, reason) and,
        if nothing failed or with --skip_bad, writes the final file once and removes the parts.
        Otherwise the parts stay, the status is 1, and a rerun (after fixing the videos, or with
        --skip_bad) resumes: only the failed keys are tried again.
"""
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List, Optional

import torch

from util import dist
from util.errors import InputError, one_line

from .clip import ClipEncoder
from .store import DictOutput, write_failures


# ---- processes (torchrun) ----

class Procs:
    """This process's rank among `world` (torchrun sets RANK/WORLD_SIZE) and its device (util/dist.py).
    `join()` starts the coordination (gloo, with a long timeout since fast processes wait at the end for
    slow ones)."""

    def __init__(self, device: str = "auto"):
        self.world, self.rank = dist.env_world(), dist.env_rank()
        self.device = dist.select_device(device)

    def join(self):
        """Call after loading CLIP: a process that joined gloo before loading transformers' model aborts
        at exit now and then (std::terminate from a leftover thread; seen with torch 2.13, gloo on CPU)."""
        dist.init_group("gloo", timedelta(hours=24))

    @property
    def main(self) -> bool:
        return self.rank == 0

    barrier = staticmethod(dist.barrier)
    gather = staticmethod(dist.gather_objects)
    close = staticmethod(dist.cleanup)


# ---- a task: units of work with keys, an output, a way to process units ----

@dataclass
class Task:
    name: str                      # dataset name, used in messages and the failures file name
    units: list                    # sources.Job, or text.TextUnit; each has .keys
    output: object                 # DictOutput or FileDirOutput
    process: Callable              # (units, output, encoder, args, bar) -> (failures, n encoded)
    unit_word: str = "videos"
    item_word: str = "frames"               # what a unit is made of (what gets encoded)
    note: str = ""
    key_order: Optional[List[str]] = None   # every key, in the order of the output (default: unit order)
    group: int = 1                 # units encoded together, saved and redone as a whole (`Batcher`)
    bytes_per_key: int = 64 << 10  # a rough size of one key's features (the free-space check)

    @property
    def failures_path(self) -> str:
        out = self.output
        base = out.path.parent if isinstance(out, DictOutput) else out.folder.parent
        return str(base / f"failures_{self.name}.jsonl")


def groups_of(units: list, size: int) -> List[list]:
    """The encoding groups: `size` consecutive units of the task's full list (see `Batcher`)."""
    return [units[i:i + size] for i in range(0, len(units), size)]


def group_size(args) -> int:
    """--group, or batch_size // 16 units (16 frames a video fill a batch on average)."""
    return args.group or max(1, args.batch_size // 16)


def _take(groups: List[list], max_units: Optional[int]) -> List[list]:
    """Whole groups, until `max_units` units are taken (all with None)."""
    if max_units is None:
        return groups
    out, n = [], 0
    for g in groups:
        if n >= max_units:
            break
        out.append(g)
        n += len(g)
    return out


def run_task(task: Task, args, procs: Procs, encoder: ClipEncoder) -> int:
    """Steps 1-4 of the module docstring; returns the exit status (the same in every process)."""
    fresh = bool(args.overwrite)
    task.output.check(fresh)
    all_keys = [k for u in task.units for k in u.keys]
    if len(set(all_keys)) != len(all_keys):
        raise AssertionError(f"{task.name}: the job list repeats a feature key")
    lock = dist.on_main(task.output.claim, len(all_keys) * task.bytes_per_key)
    try:
        return _run_locked(task, args, procs, encoder, all_keys, fresh)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(task: Task, args, procs: Procs, encoder: ClipEncoder, all_keys: List[str], fresh: bool) -> int:
    if procs.main:
        task.output.prepare(fresh)
    procs.barrier()
    if task.key_order is not None:
        if sorted(task.key_order) != sorted(all_keys):
            raise AssertionError(f"{task.name}: key_order does not list every key of the jobs once")
        all_keys = list(task.key_order)
    done = task.output.done_keys(all_keys) & set(all_keys)
    procs.barrier()
    # a group with a key to do is done again whole: its batches are those of an uninterrupted run
    pending = [g for g in groups_of(task.units, task.group) if any(k not in done for u in g for k in u.keys)]
    n_pending = sum(len(g) for g in pending)
    mine = _take(pending[procs.rank::procs.world], args.max_videos)
    if procs.main:
        what = f"{task.name}: {len(task.units)} {task.unit_word}, {len(all_keys)} feature keys"
        if done:
            what += f"; {len(done)} keys already done (resuming)"
        print(f"{what}; {n_pending} {task.unit_word} to do in {procs.world} process(es) -> "
              f"{task.output.describe()}" + (f"\n{task.note}" if task.note else ""), flush=True)
    t0 = time.perf_counter()
    bar = _progress(sum(len(g) for g in mine), task.unit_word, disable=not procs.main or args.quiet)
    failures, n_frames, error = [], 0, None
    try:
        try:
            failures, n_frames = task.process(mine, task.output, encoder, args, bar)
        finally:
            task.output.flush()  # what is finished is saved, however the run ends
            bar.close()
    except InputError as e:  # e.g. a full disk: every process ends with this one line
        error = (type(e), one_line(e))
    left = sum(len(g) for g in pending[procs.rank::procs.world]) - sum(len(g) for g in mine)
    reports = procs.gather({"failures": failures, "frames": n_frames, "left": left, "error": error,
                            "seconds": time.perf_counter() - t0})
    errors = [r["error"] for r in reports if r["error"] is not None]
    if errors:
        raise errors[0][0](errors[0][1])
    failures = [f for r in reports for f in r["failures"]]
    left = sum(r["left"] for r in reports)
    return procs.gather(dist.on_main(_finish, task, args, all_keys, failures, n_pending, left, reports))[0]


def _finish(task: Task, args, all_keys, failures, pending, left, reports) -> int:
    items, secs = sum(r["frames"] for r in reports), max(r["seconds"] for r in reports)
    word = task.item_word
    rate = f"{items} {word} in {secs:.1f} s ({items / max(secs, 1e-9):.1f} {word}/s)"
    order = {k: i for i, k in enumerate(all_keys)}
    failures.sort(key=lambda f: order.get(f["key"], len(order)))
    if left:
        print(f"{task.name}: stopped after --max_videos; {left} {task.unit_word} left, {len(failures)} failed "
              f"so far (tried again next time). Partial results are kept: run the same command again to "
              f"continue. {rate}")
        return 0
    write_failures(task.failures_path, failures)
    if not failures and not pending and task.output.complete():
        print(f"{task.name}: nothing to do, all {len(all_keys)} keys are in {task.output.describe()}")
        return 0
    if failures and not args.skip_bad:
        out = task.output
        kept = (f"{out.describe()} was not (re)written, finished keys wait in {out.parts}"
                if isinstance(out, DictOutput) else f"finished keys have their files in {out.folder}")
        print(f"{task.name}: {len(failures)} of {len(all_keys)} keys failed, listed in {task.failures_path} "
              f"(e.g. {failures[0]['key']}: {failures[0]['reason']}); {kept}. Fix the videos and rerun "
              f"(only the failed ones are redone), or pass --skip_bad to accept the output without them.",
              file=sys.stderr)
        return 1
    summary = {"n_failed": len(failures), "failures": task.failures_path if failures else None,
               "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    n = task.output.finish(all_keys, summary)
    msg = f"{task.name}: wrote {n} of {len(all_keys)} keys to {task.output.describe()}; {rate}"
    if failures:
        msg += f"; {len(failures)} skipped (--skip_bad), listed in {task.failures_path}"
    print(msg)
    return 0


def _progress(total: int, unit: str, disable: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit=unit[:-1] if unit.endswith("s") else unit, disable=disable,
                dynamic_ncols=True, smoothing=0.05)


class Batcher:
    """Encodes the items (frames [n, 224, 224, 3], or sentences) of one group of units at a time: the
    group's items, concatenated in the order they are added, are cut into batches of `batch_size` (the
    last one holds the rest). Short units still fill large batches, and a batch's composition depends
    only on the group's data, never on where a run started or was interrupted, so features are the same
    to the bit however a run was resumed (a model's output for an item can depend on its batch).
    `end_group()` hands back (key, features [n, 768]) for each key of the group."""

    def __init__(self, encode: Callable, batch_size: int, join: Callable = torch.cat):
        self.encode, self.batch_size, self.join = encode, batch_size, join
        self._keys, self._waiting, self._n, self._feats = [], [], 0, []

    def add(self, key: str, items):
        self._keys.append((key, len(items)))
        self._waiting.append(items)
        self._n += len(items)
        while self._n >= self.batch_size:
            self._encode(self.batch_size)

    def _encode(self, n: int):
        items = self._waiting[0] if len(self._waiting) == 1 else self.join(self._waiting)
        self._feats.append(self.encode(items[:n]).cpu())
        rest = items[n:]
        self._waiting, self._n = ([rest] if len(rest) else []), len(rest)

    def end_group(self) -> list:
        if self._n:
            self._encode(self._n)
        if not self._keys:
            return []
        feats = torch.cat(self._feats)                                # [sum(sizes), 768]
        out = list(zip([k for k, _ in self._keys], torch.split(feats, [n for _, n in self._keys])))
        self._keys, self._feats = [], []
        return out
