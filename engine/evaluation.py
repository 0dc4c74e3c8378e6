"""eval.py's run shell: everything an evaluation does around the model, the same for the two things it
runs, multiple-choice scoring (engine/scoring.py) and generation (engine/generation.py).

    check     what the task needs before anything starts (the caption metrics' Java)
    open      processes (torchrun or one), seed, dtype, the output folder (rank 0 locks it for this run
              until it ends: a second run into it is refused at once; util/lock.py), the tokenizer
    items     the task's annotations and features, all read and checked before the model loads
    load      the memory (when the run uses it: `EvalConfig.use_memory`), then the TOPA checkpoint,
              then the backbone (minutes for 13B)
    steps     the items in batches planned without regard to the number of processes; at step s rank r
              runs batch s * world + r, so N processes give exactly the outputs of one. After every step
              the ranks gather its rows and rank 0 appends them to the predictions file, so a failure
              late in a run loses nothing done before it. An error in any rank's batch (a bad feature
              row, a score that is not finite) stops every rank with it once the step's good rows are in
    finish    rank 0 writes the final files atomically (predictions in item order, the result file with
              the run's settings) and prints the table

A task is an object with `done` (what its rows are: "questions scored"), `check()`, `items(run)`, `batches(items)`, `steps(run, model, memory, items,
batches)` (this rank's (rows, error) per batch), `row(items, row)` (a row as the predictions file holds
it) and `finish(run, items, rows)`; rows carry their item's `index`.
"""
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from tqdm import tqdm

from dataloader import benchmarks
from llama.build import load_tokenizer_for, load_topa, resolve_dtype
from llama.memory import load_memory
from text.tokenizer import Tokenizer
from util import dist
from util.errors import InputError, one_line
from util.files import LineWriter, claim_output_dir

from .config import EvalConfig, config_dict

StepRows = Tuple[List[dict], Optional[InputError]]   # one batch's rows, and the error that stopped some of it


@dataclass
class Run:
    """An evaluation run's context: its config and benchmark, processes, compute dtype, output folder
    and tokenizer."""
    cfg: EvalConfig
    bench: benchmarks.Benchmark
    world: int
    device: torch.device
    dtype: torch.dtype
    out: Path
    tok: Tokenizer

    def settings(self, **extra) -> dict:
        """The run's settings, as result files record them."""
        cfg = self.cfg
        return {"config": config_dict(cfg), "checkpoint": str(Path(cfg.resume).resolve()) if cfg.resume else None,
                **extra, "world_size": self.world}


def jsonl(rows: Iterable[dict]) -> str:
    """Rows as JSON lines (UTF-8 as it reads); NaN / Inf can never reach a file (strict JSON)."""
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)


def output_names(name: str, split: str) -> Dict[str, str]:
    """The files one evaluation of benchmark `name` writes, by kind: `predictions` (one line per item),
    `accuracy` (multiple choice, MVBench) or `metrics` (captioning), and for multiple choice `skipped`
    (ids left out by --skip_missing) and `submission` (test sets)."""
    tag = f"{name}_{split}"
    return {"predictions": f"predictions_{tag}.jsonl", "accuracy": f"accuracy_{tag}.json",
            "metrics": f"metrics_{tag}.json", "skipped": f"skipped_{tag}.txt", "submission": f"submission_{tag}.json"}


@contextmanager
def open_run(cfg: EvalConfig) -> Iterator[Run]:
    """Processes, seed, dtype, the output folder (rank 0 checks that it can write there and locks it
    until the block ends: `claim_output_dir`; an error there ends every rank), the tokenizer."""
    _, world, device = dist.init_distributed(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.precision, device)
    with claim_output_dir(cfg.run.output_dir) as out:
        yield Run(cfg, benchmarks.get(cfg.data.dataset), world, device, dtype, out, load_tokenizer_for(cfg.model))


def load_model(run: Run):
    """(model, memory on the device or None): the memory file first (small, often wrong), then the TOPA
    checkpoint and the backbone."""
    cfg = run.cfg
    memory = load_memory(cfg.data.memory_file) if cfg.use_memory else None
    model, _, _ = load_topa(cfg.model, run.device, run.dtype, tokenizer=run.tok, resume=cfg.resume)
    if cfg.resume is None and dist.is_main():
        print("warning: no --resume checkpoint: evaluating freshly initialised TOPA parameters", file=sys.stderr)
    model.eval()
    return model, (memory.to(run.device) if memory is not None else None)


def my_batches(batches: List[List[int]]) -> Tuple[List[List[int]], int]:
    """This rank's batches (step s: batch s * world + rank) and the number of steps every rank runs."""
    world = dist.world_size()
    return batches[dist.rank()::world], math.ceil(len(batches) / world)


def gather_steps(steps: Iterator[StepRows], n_steps: int, n_items: int, *,
                 stream: Optional["PredictionStream"] = None, desc: str = "eval", progress: bool = True, done: str = "items done") -> List[dict]:
    """Run `n_steps` steps on every rank (`steps` yields this rank's batches; a rank without a batch
    at a step contributes nothing), gather each step's rows on every rank and hand them to `stream`
    (rank 0). The first error of a step, on any rank, is raised on every rank after the step's rows
    are streamed, saying how many rows (`done`: "questions scored") are in the stream's file. Returns
    every row, in item order."""
    rows: List[dict] = []
    for _ in tqdm(range(n_steps), desc=desc, disable=not (progress and dist.is_main()), dynamic_ncols=True):
        mine, error = next(steps, ([], None))
        step = dist.gather_objects((mine, None if error is None else (type(error), one_line(error))))
        for step_rows, _ in step:
            rows.extend(step_rows)
            if stream is not None:
                dist.on_main(stream, step_rows)  # a full disk ends every rank with the same line
        errors = [e for _, e in step if e is not None]
        if errors:
            cls, msg = errors[0]
            kept = f" ({len(rows)} {done} before it are in {stream.path})" if stream is not None and rows else ""
            raise cls(msg + kept)
    rows.sort(key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(n_items)):
        raise RuntimeError(f"evaluation gathered {len(rows)} results for {n_items} items")
    return rows


class PredictionStream:
    """Rank 0's predictions file while a run is under way: started afresh, each step's rows appended
    (as `to_line` turns them into file rows) as whole lines (`LineWriter`: a full disk leaves the lines
    before it and a "disk full" error). Other ranks get a stream that writes nothing."""

    def __init__(self, path: Path, to_line: Callable[[dict], dict]):
        self.path, self.to_line = path, to_line
        self.file = LineWriter(path) if dist.is_main() else None

    def __call__(self, rows: List[dict]):
        if self.file is not None:
            self.file.write(jsonl(self.to_line(r) for r in rows))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def run(cfg: EvalConfig, task_for: Callable[[EvalConfig], object]) -> Optional[dict]:
    """eval.py: check, open, items, load, steps, finish (the module docstring). Returns the result dict
    (rank 0)."""
    task = task_for(cfg)
    task.check()
    with open_run(cfg) as r:
        items = task.items(r)
        model, memory = load_model(r)
        names = output_names(r.bench.name, cfg.split)
        if dist.is_main():  # a previous run's results must not sit beside this run's streamed predictions
            for kind in ("accuracy", "metrics", "skipped", "submission"):
                (r.out / names[kind]).unlink(missing_ok=True)
        batches, n_steps = my_batches(task.batches(items))
        with PredictionStream(r.out / names["predictions"], lambda row: task.row(items, row)) as stream:
            with torch.no_grad():
                rows = gather_steps(task.steps(r, model, memory, items, batches), n_steps, len(items),
                                    stream=stream, desc=f"{r.bench.name}/{cfg.split}", done=task.done)
        result = dist.on_main(task.finish, r, items, rows)
        dist.barrier()
    dist.cleanup()
    return result
