"""What each --dataset means for videos, and the video pipeline: decoding in DataLoader workers while
the main process encodes large batches of frames. The run itself (sharding, resume, failures) is
video/extraction.py; text datasets are video/text_features.py.

  plan(args)      -> Task: the jobs of a benchmark (video/sources.py) and its output (video/store.py)
  main(args)      -> exit status of extract_features.py
"""
import itertools
import os
import time
from typing import List, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from dataloader import benchmarks
from dataloader.benchmarks import Benchmark
from util.dist import DTYPES, resolve_precision
from util.errors import ConfigError, MissingFileError, one_line

from . import sources
from .clip import FEATURE_DIM, ClipEncoder, preprocess
from .config import TEXT_DATASETS, VIDEO_DATASETS
from .extraction import Batcher, Procs, Task, group_size, run_task
from .frames import FOLDER_FPS, FixedRate, Segments, Strided, VideoError, as_fraction, read_frames
from .store import DictOutput, FileDirOutput

FOLDER_DEFAULT_FPS = 1  # --dataset folder (the benchmarks: their frame rule in the benchmark table)


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
        except Exception as e:  # anything else a decoder or image library raises fails this video only
            return i, out + [(k, f"unreadable: {type(e).__name__}: {one_line(e)}") for k, _ in wants]
        for (k, _), o in zip(wants, outcomes):
            out.append((k, str(o) if isinstance(o, VideoError) else torch.from_numpy(o[1])))
        return i, out


def _identity(x):
    return x


def make_encoder(args, procs: Procs, text: bool = False) -> ClipEncoder:
    """CLIP on this process's device in --precision (and its tokenizer for text datasets)."""
    encoder = ClipEncoder(args.clip_model, procs.device, DTYPES[_precision(args, procs)])
    if text:
        encoder.load_tokenizer()  # now, before Procs.join
    return encoder


def process_videos(groups: List[List[sources.Job]], output, encoder: ClipEncoder, args, bar):
    """Decode (workers) -> encode (a group's frames in batches) -> output.add at the end of each group;
    returns (failures, frames encoded)."""
    jobs = [j for g in groups for j in g]
    ends = set(itertools.accumulate(len(g) for g in groups))
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
            batcher.add(key, got)
        if i + 1 in ends:
            for k, feats in batcher.end_group():
                output.add(k, feats)
        bar.update(1)
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{n_frames / dt:.1f} frames/s, {len(failures)} failed", refresh=False)
    return failures, n_frames


# ---- what each --dataset means ----

def _settings(args, dataset: str, rule: str, precision: str) -> dict:
    """What the features depend on, recorded beside them and compared on resume. --batch_size and --group
    decide which frames are encoded together, which moves the features by up to ~1e-3 (the memory's
    chunks are its groups: no --group there)."""
    grouping = {"batch_size": args.batch_size} if dataset == "memory" else \
        {"batch_size": args.batch_size, "group": group_size(args)}
    return {"dataset": dataset, "sampling": rule, "clip_model": os.path.basename(os.path.normpath(args.clip_model)),
            "precision": precision, "feature_dim": FEATURE_DIM, **grouping}


def _precision(args, procs: Procs) -> str:
    """--precision, or fp16 on a GPU (as the published features were made) and fp32 on a CPU."""
    return resolve_precision(args.precision, procs.device, gpu_default="fp16")


def _dict_or_dir(path: str, settings: dict, save_every: int):
    return DictOutput(path, settings, save_every) if path.endswith(".pth") else FileDirOutput(path, settings)


def _fps_rule(fps_flag, default) -> Tuple[FixedRate, str]:
    fps = fps_flag if fps_flag is not None else default
    return FixedRate(as_fraction(fps)), f"{fps} frames/s"


def _annotated_jobs(args, bench: Benchmark):
    """NExT-QA, STAR, TVQA, EgoSchema: every video of the annotations, at --fps or the table's rate."""
    rule, how = _fps_rule(args.fps, bench.frames.n)
    keys = sources.annotation_keys(bench.name, args.data_root, args.splits)
    jobs = sources.jobs_for_keys(keys, sources.Resolver(args.video_dir, args.video_map), rule,
                                 as_fraction(args.frames_fps))
    return jobs, None, "", how + f"; frame folders at {args.frames_fps} fps"


def _mvbench_jobs(args, bench: Benchmark):
    if not args.mvbench_root:
        raise ConfigError("--dataset mvbench needs --mvbench_root (the folder holding json/ and video/)")
    jobs, key_order = sources.mvbench_jobs(args.mvbench_root, args.tasks)
    return jobs, key_order, "", f"MVBench {bench.frames.n} segments; frame folders at {FOLDER_FPS} fps"


def _caption_jobs(args, bench: Benchmark):
    """MSR-VTT, VATEX: the videos of the annotation file, or every video under --video_dir without one."""
    sub, name = sources.CAPTION_FILES[bench.name]
    ann = args.annotations or os.path.join(args.data_root, sub, name)
    resolver = sources.Resolver(args.video_dir, args.video_map)
    note = ""
    if os.path.isfile(ann):
        keys = sources.caption_keys(bench.name, ann)
    elif args.annotations:
        raise MissingFileError(f"--annotations {ann}: no such file")
    elif resolver.index is not None:
        keys = resolver.index.names()
        note = f"note: {ann} not found: extracting every video under {args.video_dir}"
    else:
        raise MissingFileError(f"{bench.name}: annotations {ann} not found (--annotations names them)")
    n = bench.frames.n
    jobs = sources.jobs_for_keys(keys, resolver, Strided(n), as_fraction(args.frames_fps))
    return jobs, None, note, f"{n} frames at i*(n//{n}); frame folders at {args.frames_fps} fps"


def _folder_jobs(args):
    """--dataset folder: every video under --video_dir (and --video_map), at --fps or --num_frames."""
    resolver = sources.Resolver(args.video_dir, args.video_map)
    keys = list(resolver.map) if resolver.index is None else sorted(set(resolver.index.names()) | set(resolver.map))
    if args.num_frames:
        rule, how = Segments(args.num_frames, min_frames=args.num_frames), f"{args.num_frames} segments"
    else:
        rule, how = _fps_rule(args.fps, FOLDER_DEFAULT_FPS)
    jobs = sources.jobs_for_keys(keys, resolver, rule, as_fraction(args.frames_fps))
    if not args.output:
        raise ConfigError("--dataset folder needs --output (a .pth file for one dict, or a folder for "
                          "one <name>.npy per video)")
    return jobs, None, "", how + f"; frame folders at {args.frames_fps} fps"


JOBS = {"fps": _annotated_jobs, "mvbench": _mvbench_jobs, "strided": _caption_jobs}  # by Benchmark.frames.rule


def plan(args, procs: Procs) -> Task:
    """The Task for --dataset (video datasets; text ones are in video/text_features.py): its jobs by the benchmark
    table's frame rule, written to the table's feature file (or --output)."""
    ds = args.dataset
    if ds == "folder":
        (jobs, key_order, note, how), default = _folder_jobs(args), args.output
    elif ds in VIDEO_DATASETS:
        bench = benchmarks.get(ds)
        (jobs, key_order, note, how), default = JOBS[bench.frames.rule](args, bench), bench.feature_file(args.data_root)
    else:
        raise ConfigError(f"--dataset {ds}: extraction knows {', '.join(VIDEO_DATASETS + TEXT_DATASETS)}")
    out = _dict_or_dir(args.output or default, _settings(args, ds, how, _precision(args, procs)), args.save_every)
    if isinstance(out, FileDirOutput) and any("/" in k for j in jobs for k in j.keys):
        raise ConfigError(f"--output {out.folder}: {ds} keys hold '/', so they need a .pth output")
    return Task(ds, jobs, out, process_videos, note=note, key_order=key_order, group=group_size(args))


def main(args) -> int:
    procs = Procs(args.device)
    encoder = make_encoder(args, procs, text=args.dataset in TEXT_DATASETS)
    procs.join()
    try:
        if args.dataset in TEXT_DATASETS:
            from . import text_features
            task = text_features.plan(args, _settings(args, args.dataset, "text", _precision(args, procs)))
        else:
            task = plan(args, procs)
        return run_task(task, args, procs, encoder)
    finally:
        procs.close()
