"""Progress output: one console line per log interval (rank 0), TensorBoard scalars and a JSONL
log of every logged value; the device's peak FLOP/s and memory for MFU and memory columns."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import torch

# Dense bf16 peak of a device, by a substring of its name (SXM parts).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def device_peak_tflops(configured: float = 0.0) -> Optional[float]:
    """``configured`` if > 0, else the GPU's bf16 peak from its name; None when unknown (CPU)."""
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return None


def peak_memory_gb() -> float:
    """Peak memory of this process: allocated GPU memory, or the peak resident set on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB on Linux, bytes on macOS
    return rss / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def memory_in_use_gb() -> float:
    """Memory this process holds now: allocated GPU memory, or the resident set on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2 ** 30
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 30


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
