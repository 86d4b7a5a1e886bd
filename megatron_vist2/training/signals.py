"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption, `scancel`, a launcher's shutdown) or
when the run's wall-time limit (``train.max_wall_minutes``) is reached.

The handler only sets a flag. Every rank checks it once per step through an all-reduce (max)
over the whole world, so all ranks stop after the same step, save one checkpoint together and
exit 0; the next start resumes from it (``checkpoint.auto_resume``, or ``checkpoint.load_dir``).
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    def __init__(self, max_wall_minutes: float = 0.0):
        self.received: Optional[str] = None
        self.deadline = time.time() + max_wall_minutes * 60 if max_wall_minutes > 0 else None
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        self.received = f"{signal.Signals(signum).name} received"

    def should_stop(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline and not self.received:
            self.received = "wall-time limit (train.max_wall_minutes) reached"
        flag = torch.tensor([1 if self.received else 0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
