"""Run logs (rank 0 only): JSON lines in `<output_dir>/log.jsonl` (one line per epoch, per evaluation
and every N iterations, each with a "type"), and TensorBoard scalars when `tensorboard` is installed.

Every line is valid JSON: a non-finite number is written as `null`. `rewind_log` cuts the file back to
a checkpoint when a run resumes, so that the log holds one line per iteration of the run that counted.
"""
import json
import math
import time
from pathlib import Path
from typing import Optional

from .files import append_lines, write_text_atomic

LOG_NAME = "log.jsonl"


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunLogger:
    def __init__(self, output_dir, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_NAME
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, kind: str, record: dict, step: Optional[int] = None):
        if not self.enabled:
            return
        line = {"type": kind, "time": round(time.time(), 3), **{k: _finite(v) for k, v in record.items()}}
        append_lines(self.path, json.dumps(line, allow_nan=False) + "\n")
        if self.tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def line_position(line: dict):
    """Where a log line sits in a run: (epoch, iterations done). An "iter" line is (epoch, iter); any
    other line of an epoch (its "epoch" and "eval" lines) comes after all its iterations."""
    epoch = line.get("epoch")
    if not isinstance(epoch, int):
        return None
    it = line.get("iter") if line.get("type") == "iter" else None
    return epoch, it if isinstance(it, int) else math.inf


def rewind_log(output_dir, epoch: int, iteration: float = math.inf) -> int:
    """Keep the lines of `<output_dir>/log.jsonl` up to position (epoch, iteration) — a checkpoint's —
    and drop the later ones (written by a run killed after that checkpoint) and any torn line. The file
    is replaced atomically. Returns the number of lines dropped."""
    path = Path(output_dir) / LOG_NAME
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:   # a line cut short by a kill
                dropped += 1
                continue
            pos = line_position(line) if isinstance(line, dict) else None
            if pos is not None and pos > (epoch, iteration):
                dropped += 1
            else:
                kept.append(raw if raw.endswith("\n") else raw + "\n")
    if dropped:
        write_text_atomic("".join(kept), path)
    return dropped
