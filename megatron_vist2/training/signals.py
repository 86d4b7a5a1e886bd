"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption, `scancel`, a launcher's shutdown), on the
first Ctrl-C (SIGINT), or when the run's wall-time limit (``train.max_wall_minutes``) is reached.

The handler only sets a flag. Every rank checks it once per step through an all-reduce (max)
over the whole world, so all ranks stop after the same step, save one checkpoint together and
exit 0; the next start resumes from it (``checkpoint.auto_resume``, or ``checkpoint.load_dir``).
A second SIGINT stops at once (KeyboardInterrupt): the steps since the last save are lost.

The flag tensor lives on the run's device: NCCL all-reduces only CUDA tensors (gloo takes CPU).
"""
from __future__ import annotations

import signal
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopOnSignal:
    def __init__(self, max_wall_minutes: float = 0.0, device="cpu"):
        self.received: Optional[str] = None
        self.device = torch.device(device)
        self.deadline = time.time() + max_wall_minutes * 60 if max_wall_minutes > 0 else None
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received and self.received.startswith("SIGINT"):
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second Ctrl-C: stopping at once, without a checkpoint")
        self.received = f"{signal.Signals(signum).name} received"
        if signum == signal.SIGINT:
            print("Ctrl-C: saving a checkpoint after this step, then exiting (press Ctrl-C again to "
                  "stop at once, without saving)", file=sys.stderr, flush=True)

    def flag(self) -> torch.Tensor:
        """This rank's stop flag, on the device its collectives run on."""
        return torch.tensor([1 if self.received else 0], dtype=torch.int32, device=self.device)

    def should_stop(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline and not self.received:
            self.received = "wall-time limit (train.max_wall_minutes) reached"
        flag = self.flag()
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
