"""Tests only: the faults a test injects through ``MEGATRON_VIST2_FAULT``, the one place that
reads it. Nothing here acts outside tests (the variable is unset).

A comma-separated list of ``KIND:STEPS[:RANK[:ARG]]``; STEPS is ``N``, ``A-B`` or ``A-`` (every
step from A), 1-based optimizer steps (for a save: the step it saves); RANK a global rank (``*``
or absent: every rank); ARG a number. A kind not listed is refused (a typo would silently test
nothing).

Checkpoint faults (acted on here, for checkpoint/save.py and async_write.py):
- ``kill-in-save``: SIGKILL after the rank wrote its shards, before the save is complete.
- ``kill-in-async-write``: SIGKILL from the background writer after the first file it wrote.
- ``slow-async-write``: the background writer sleeps ARG seconds (default 1) after each file.
- ``nan-weights``: a NaN in the first parameter after optimizer step N, as an update that
  diverges while its loss is still finite does.
Run-health faults (acted on by training/faults.py): ``nan-loss``, ``nan-grad``, ``stall``,
``spike`` (described there).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import List, Optional

ENV = "MEGATRON_VIST2_FAULT"
CHECKPOINT_KINDS = ("kill-in-save", "kill-in-async-write", "slow-async-write", "nan-weights")
TRAINING_KINDS = ("nan-loss", "nan-grad", "stall", "spike")


@dataclass
class Fault:
    kind: str
    first: int
    last: Optional[int]            # None: open-ended
    rank: Optional[int]            # None: every rank
    arg: Optional[float]

    def hits(self, step: int, rank: int) -> bool:
        return step >= self.first and (self.last is None or step <= self.last) \
            and (self.rank is None or self.rank == rank)


def parse(spec: str) -> List[Fault]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, rest = item.partition(":")
        if kind not in CHECKPOINT_KINDS + TRAINING_KINDS:
            raise ValueError(f"{ENV}: unknown fault {kind!r} in {spec!r} (known: "
                             f"{', '.join(CHECKPOINT_KINDS + TRAINING_KINDS)})")
        parts = rest.split(":")
        first, dash, last = parts[0].partition("-")
        rank = parts[1] if len(parts) > 1 and parts[1] not in ("", "*") else None
        out.append(Fault(kind, int(first), int(last) if last else (None if dash else int(first)),
                         int(rank) if rank is not None else None,
                         float(parts[2]) if len(parts) > 2 else None))
    return out


def from_env(kinds) -> List[Fault]:
    """This process's faults of ``kinds`` (none outside tests)."""
    return [f for f in parse(os.environ.get(ENV, "")) if f.kind in kinds]


def _hit(kind: str, step: int, rank: int) -> Optional[Fault]:
    return next((f for f in from_env((kind,)) if f.hits(step, rank)), None)


def kill_in_save(step: int, rank: int) -> None:
    if _hit("kill-in-save", step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def after_async_file(step: int, rank: int) -> None:
    """The background writer, after each file of step ``step``'s save."""
    slow = _hit("slow-async-write", step, rank)
    if slow:
        time.sleep(slow.arg or 1.0)
    if _hit("kill-in-async-write", step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_weights(module, step: int, rank: int) -> None:
    """After optimizer step ``step`` (an fp32 learning rate large enough to make the weights
    non-finite for real cannot be converted by torch's Adam)."""
    if _hit("nan-weights", step, rank):
        import torch
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] = float("nan")
