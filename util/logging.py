"""Run logs (rank 0 only): JSON lines in `<output_dir>/log.jsonl` (one line per epoch, per evaluation
and every N iterations, each with a "type"), and TensorBoard scalars when `tensorboard` is installed."""
import json
import time
from pathlib import Path
from typing import Optional


class RunLogger:
    def __init__(self, output_dir, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
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
        line = {"type": kind, "time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
