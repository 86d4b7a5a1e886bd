"""Progress output: one console line per log interval (rank 0), TensorBoard scalars and a JSONL
log of every logged value."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict


class MetricsLogger:
    def __init__(self, log_dir: str, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.jsonl = open(Path(log_dir) / "metrics.jsonl", "a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(Path(log_dir) / "tensorboard"))

    def log(self, step: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, val in values.items():
                self.writer.add_scalar(key, val, step)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
