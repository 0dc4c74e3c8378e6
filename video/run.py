"""The run of an extraction task, the same for videos and text: which processes do which units, what
is skipped on resume, and what happens to the ones that fail.

  run_task(task, args, procs, encoder) -> exit status:
     1. every process checks the existing results' settings; process 0 deletes them with --overwrite;
     2. keys already done (in the output, or in the parts of an interrupted run) are skipped;
     3. process r of N (torchrun) takes every N-th remaining unit and runs `task.process` on it, which
        encodes in large batches (`Batcher`) and hands features to the output as it goes;
     4. process 0 lists failures (`failures_<dataset>.jsonl` beside the output: key, path, reason) and,
        if nothing failed or with --skip_bad, writes the final file once and removes the parts.
        Otherwise the parts stay, the status is 1, and a rerun (after fixing the videos, or with
        --skip_bad) resumes: only the failed keys are tried again.
"""
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Callable, List, Optional

import torch

from util import dist

from .clip import ClipEncoder, encode_in_batches
from .sources import Job
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

    @property
    def failures_path(self) -> str:
        out = self.output
        base = out.path.parent if isinstance(out, DictOutput) else out.folder.parent
        return str(base / f"failures_{self.name}.jsonl")


def _pending(unit, done: set):
    """`unit` with its done keys left out, or None if nothing is left."""
    if isinstance(unit, Job):
        wants = [(k, r) for k, r in unit.wants if k not in done]
        return replace(unit, wants=wants) if wants else None
    keys = [k for k in unit.keys if k not in done]
    return unit if keys else None


def run_task(task: Task, args, procs: Procs, encoder: ClipEncoder) -> int:
    """Steps 1-4 of the module docstring; returns the exit status (the same in every process)."""
    fresh = bool(args.overwrite)
    task.output.check(fresh)
    if procs.main:
        task.output.prepare(fresh)
    procs.barrier()
    all_keys = [k for u in task.units for k in u.keys]
    if len(set(all_keys)) != len(all_keys):
        raise AssertionError(f"{task.name}: the job list repeats a feature key")
    if task.key_order is not None:
        if sorted(task.key_order) != sorted(all_keys):
            raise AssertionError(f"{task.name}: key_order does not list every key of the jobs once")
        all_keys = list(task.key_order)
    done = task.output.done_keys(all_keys) & set(all_keys)
    procs.barrier()
    pending = [p for p in (_pending(u, done) for u in task.units) if p is not None]
    mine = pending[procs.rank::procs.world]
    if args.max_videos is not None:
        mine = mine[:args.max_videos]
    if procs.main:
        what = f"{task.name}: {len(task.units)} {task.unit_word}, {len(all_keys)} feature keys"
        if done:
            what += f"; {len(done)} keys already done (resuming)"
        print(f"{what}; {len(pending)} {task.unit_word} to do in {procs.world} process(es) -> "
              f"{task.output.describe()}" + (f"\n{task.note}" if task.note else ""), flush=True)
    t0 = time.perf_counter()
    bar = _progress(len(mine), task.unit_word, disable=not procs.main or args.quiet)
    try:
        failures, n_frames = task.process(mine, task.output, encoder, args, bar)
    finally:
        task.output.flush()
        bar.close()
    left = len(pending[procs.rank::procs.world]) - len(mine)
    reports = procs.gather({"failures": failures, "frames": n_frames, "left": left,
                            "seconds": time.perf_counter() - t0})
    procs.barrier()
    failures = [f for r in reports for f in r["failures"]]
    left = sum(r["left"] for r in reports)
    status = 0
    if procs.main:
        status = _finish(task, args, all_keys, failures, len(pending), left, reports)
    procs.barrier()
    return procs.gather(status)[0]


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
    """Collects (key, items) until `batch_size` items (frames [n, 224, 224, 3], or sentences) wait, then
    encodes them together, so short videos still fill large batches, and hands back (key, features
    [n, 768]) for each key."""

    def __init__(self, encode: Callable, batch_size: int, join: Callable = torch.cat):
        self.encode, self.batch_size, self.join = encode, batch_size, join
        self.pending, self.n = [], 0

    def add(self, key: str, items) -> list:
        self.pending.append((key, items))
        self.n += len(items)
        return self.flush() if self.n >= self.batch_size else []

    def flush(self) -> list:
        if not self.pending:
            return []
        keys = [k for k, _ in self.pending]
        sizes = [len(x) for _, x in self.pending]
        items = self.join([x for _, x in self.pending])               # sum(sizes) frames or sentences
        feats = encode_in_batches(self.encode, items, self.batch_size)  # [sum(sizes), 768]
        self.pending, self.n = [], 0
        return list(zip(keys, torch.split(feats, sizes)))
