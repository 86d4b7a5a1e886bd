"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption, `scancel`, a launcher's shutdown).

The handler only sets a flag. Every rank checks it once per step through an all-reduce (max)
over the whole world, so all ranks stop after the same step, save one checkpoint together and
exit 0; the next start resumes from it with ``checkpoint.load_dir``.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    def __init__(self):
        self.received = None
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.received else 0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
