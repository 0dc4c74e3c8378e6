"""The extraction run: which videos, in which processes, into which files, and what happens to the ones
that fail.

  plan(args)        -> Task: the jobs of a benchmark (video/sources.py) and its output (video/store.py)
  run_task(task)    -> exit status; the same steps for video and text tasks:
     1. every process checks the existing results' settings; process 0 records this run's;
     2. keys already done (in the output, or in the parts of an interrupted run) are skipped;
     3. process r of N takes every N-th remaining job (torchrun), decodes in DataLoader workers,
        encodes large batches of frames on its device, saves parts as it goes;
     4. process 0 lists failures (`failures_<dataset>.jsonl` beside the output: key, path, reason) and,
        if nothing failed or with --skip_bad, writes the final file once and removes the parts.
        Otherwise the parts stay, the status is 1, and a rerun (after fixing the videos, or with
        --skip_bad) resumes: only the failed keys are tried again.
"""
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Callable, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from util.errors import ConfigError, MissingFileError

from . import sources
from .clip import FEATURE_DIM, ClipEncoder, encode_in_batches, preprocess
from .frames import FixedRate, Segments, Strided, VideoError, as_fraction, read_frames
from .store import DictOutput, FileDirOutput, write_failures

DEFAULT_FPS = {"nextqa": 1, "star": 1, "egos": 1, "tvqa": 3, "folder": 1}
VIDEO_DATASETS = ("nextqa", "star", "tvqa", "egos", "mvbench", "msrvtt", "vatex", "folder")
TEXT_DATASETS = ("textvid", "memory")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---- processes (torchrun) ----

class Procs:
    """This process's rank among `world` (torchrun sets RANK/WORLD_SIZE) and its device. `join()` starts
    the coordination (gloo, with a long timeout since fast processes wait at the end for slow ones)."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        self.device = torch.device(device)

    def join(self):
        """Call after loading CLIP: a process that joined gloo before loading transformers' model aborts
        at exit now and then (std::terminate from a leftover thread; seen with torch 2.13, gloo on CPU)."""
        if self.world > 1:
            import torch.distributed as dist
            self._dist = dist
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(hours=24))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            self._dist.barrier()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.world > 1 and self._dist.is_initialized():
            self._dist.destroy_process_group()


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
    if isinstance(unit, sources.Job):
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


# ---- video jobs: decoding in DataLoader workers, encoding in large batches ----

class _Decoded(Dataset):
    """Item i: (i, [(key, uint8 [rows, 224, 224, 3] or the reason it failed)]) for jobs[i]."""

    def __init__(self, jobs: List[sources.Job]):
        self.jobs = jobs

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        job = self.jobs[i]
        out = [(k, job.bad_keys[k]) for k, _ in job.wants if k in job.bad_keys]
        wants = [(k, r) for k, r in job.wants if k not in job.bad_keys]
        if job.problem is not None:
            return i, out + [(k, job.problem) for k, _ in wants]
        if not wants:
            return i, out
        try:
            outcomes = read_frames(job.path, [r for _, r in wants], preprocess, folder_fps=job.folder_fps)
        except VideoError as e:
            return i, out + [(k, str(e)) for k, _ in wants]
        for (k, _), o in zip(wants, outcomes):
            out.append((k, str(o) if isinstance(o, VideoError) else torch.from_numpy(o[1])))
        return i, out


def _identity(x):
    return x


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


def make_encoder(args, procs: Procs, text: bool = False) -> ClipEncoder:
    encoder = ClipEncoder(args.clip_model, procs.device, PRECISIONS[_precision(args, procs)])
    if text:
        encoder.load_tokenizer()  # now, before Procs.join
    return encoder


def process_videos(jobs: List[sources.Job], output, encoder: ClipEncoder, args, bar):
    """Decode (workers) -> encode (batches) -> output.add; returns (failures, frames encoded)."""
    batcher = Batcher(encoder.images, args.batch_size)
    loader = DataLoader(_Decoded(jobs), batch_size=None, shuffle=False, num_workers=args.num_workers,
                        collate_fn=_identity, pin_memory=encoder.device.type == "cuda",
                        prefetch_factor=4 if args.num_workers else None)
    failures, n_frames, t0 = [], 0, time.perf_counter()
    for i, outcomes in loader:
        job = jobs[i]
        for key, got in outcomes:
            if isinstance(got, str):
                failures.append({"key": key, "path": job.path, "reason": got})
                continue
            n_frames += got.shape[0]
            for k, feats in batcher.add(key, got):
                output.add(k, feats)
        bar.update(1)
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{n_frames / dt:.1f} frames/s, {len(failures)} failed", refresh=False)
    for k, feats in batcher.flush():
        output.add(k, feats)
    return failures, n_frames


# ---- what each --dataset means ----

def _settings(args, dataset: str, rule: str, precision: str) -> dict:
    return {"dataset": dataset, "sampling": rule, "clip_model": os.path.basename(os.path.normpath(args.clip_model)),
            "precision": precision, "feature_dim": FEATURE_DIM}


def _precision(args, procs: Procs) -> str:
    """--precision, or fp16 on a GPU (as the published features were made) and fp32 on a CPU."""
    return args.precision or ("fp16" if procs.device.type == "cuda" else "fp32")


def _dict_or_dir(path: str, settings: dict, save_every: int):
    return DictOutput(path, settings, save_every) if path.endswith(".pth") else FileDirOutput(path, settings)


def plan(args, procs: Procs) -> Task:
    """The Task for --dataset (video datasets; text ones are in video/text.py)."""
    ds, root = args.dataset, args.data_root
    prec = _precision(args, procs)
    folder_fps = as_fraction(args.frames_fps)
    frames_note = f"; frame folders at {args.frames_fps} fps"
    note, key_order = "", None
    if ds in ("nextqa", "star", "tvqa", "egos"):
        fps = args.fps if args.fps is not None else DEFAULT_FPS[ds]
        rule = FixedRate(as_fraction(fps))
        keys = sources.annotation_keys(ds, root, args.splits)
        jobs = sources.jobs_for_keys(keys, sources.Resolver(args.video_dir, args.video_map), rule, folder_fps)
        settings = _settings(args, ds, f"{fps} frames/s" + frames_note, prec)
        default = (os.path.join(root, "egos", "features") if ds == "egos"
                   else os.path.join(root, ds, "clipvitl14.pth"))
    elif ds == "mvbench":
        if not args.mvbench_root:
            raise ConfigError("--dataset mvbench needs --mvbench_root (the folder holding json/ and video/)")
        jobs, key_order = sources.mvbench_jobs(args.mvbench_root, args.tasks)
        settings = _settings(args, ds, "MVBench 10 segments; frame folders at 3 fps", prec)
        default = os.path.join(root, "mvbench", "clipvitl14.pth")
    elif ds in ("msrvtt", "vatex"):
        sub, name = sources.CAPTION_FILES[ds]
        ann = args.annotations or os.path.join(root, sub, name)
        resolver = sources.Resolver(args.video_dir, args.video_map)
        if os.path.isfile(ann):
            keys = sources.caption_keys(ds, ann)
        elif args.annotations:
            raise MissingFileError(f"--annotations {ann}: no such file")
        elif resolver.index is not None:
            keys = resolver.index.names()
            note = f"note: {ann} not found: extracting every video under {args.video_dir}"
        else:
            raise MissingFileError(f"{ds}: annotations {ann} not found (--annotations names them)")
        jobs = sources.jobs_for_keys(keys, resolver, Strided(10), folder_fps)
        settings = _settings(args, ds, "10 frames at i*(n//10)" + frames_note, prec)
        default = os.path.join(root, sub, "clipvitl14.pth")
    elif ds == "folder":
        resolver = sources.Resolver(args.video_dir, args.video_map)
        keys = list(resolver.map) if resolver.index is None else sorted(set(resolver.index.names()) | set(resolver.map))
        if args.num_frames:
            rule, how = Segments(args.num_frames, min_frames=args.num_frames), f"{args.num_frames} segments"
        else:
            fps = args.fps if args.fps is not None else DEFAULT_FPS[ds]
            rule, how = FixedRate(as_fraction(fps)), f"{fps} frames/s"
        jobs = sources.jobs_for_keys(keys, resolver, rule, folder_fps)
        settings = _settings(args, ds, how + frames_note, prec)
        if not args.output:
            raise ConfigError("--dataset folder needs --output (a .pth file for one dict, or a folder for "
                             "one <name>.npy per video)")
        default = args.output
    else:
        raise ConfigError(f"--dataset {ds}: extraction knows {', '.join(VIDEO_DATASETS + TEXT_DATASETS)}")
    out = _dict_or_dir(args.output or default, settings, args.save_every)
    if isinstance(out, FileDirOutput) and any("/" in k for j in jobs for k in j.keys):
        raise ConfigError(f"--output {out.folder}: {ds} keys hold '/', so they need a .pth output")
    return Task(ds, jobs, out, process_videos, note=note, key_order=key_order)


def main(args) -> int:
    procs = Procs(args.device)
    encoder = make_encoder(args, procs, text=args.dataset in TEXT_DATASETS)
    procs.join()
    try:
        if args.dataset in TEXT_DATASETS:
            from . import text
            task = text.plan(args, procs, _settings(args, args.dataset, "text", _precision(args, procs)))
        else:
            task = plan(args, procs)
        return run_task(task, args, procs, encoder)
    finally:
        procs.close()
