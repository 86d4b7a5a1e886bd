"""Hangs: a per-rank watchdog thread and the marker that says which collective a rank is in.

``collective(name)`` marks the few collectives the trainer and the health code issue (the step's
flag all-reduce, the step-time all-gather, the stop flag, the whole pipeline step with its
DeepSpeed gradient collectives). It sets a string. A ``timed`` marker on a GPU also synchronises
the device when it is entered and before it is left: NCCL collectives return as soon as they are
queued, so without the syncs its time would be ~0 (the wait would land in whatever next reads a
result, outside any marker) and a rank stuck in it would be reported elsewhere. The first sync
runs before the marker is set, so work queued earlier (compute, DeepSpeed's reductions) is
neither counted as waiting nor blamed on this collective. Timed markers are small collectives
once per step: two syncs each. On the CPU (gloo blocks) nothing is synchronised.

``Watchdog`` is a daemon thread on every rank. The trainer tells it when a step starts and ends;
when a step has run longer than ``max(floor_s, multiple x median step time)`` (the median of the
recent steps; only the floor before the first step has finished) it writes this rank's Python
stacks (every thread, ``sys._current_frames``) with the step, the elapsed time and the marked
collective to ``<logging.dir>/watchdog/rank<R>.txt`` (appended) and one line to stderr, once per
stalled step. It issues no collective itself (a hung collective would hang it too): every rank
dumps its own view, and the files side by side show which rank is elsewhere (docs/training.md,
"Run health"). torch.distributed's own timeout (parallel/distributed.py, 30 minutes) still ends
a collective that never completes; the watchdog speaks long before.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

IDLE = "none (compute, data loading, or an unmarked collective such as a checkpoint save)"
_current = [IDLE]              # one writer per rank (the training thread); read by the watchdog
_waited = [0.0]                # seconds spent in collectives marked ``timed`` (waiting for others)


def device_sync() -> None:
    """Wait until this rank's GPU has run everything queued (nothing to do on the CPU)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def collective(name: str, timed: bool = False) -> Iterator[None]:
    """Mark the collective this rank is about to enter (restored on exit, nesting allowed).
    ``timed``: a small collective whose duration is waiting for the other ranks (the step-time
    report subtracts it: see health.py); synchronised on a GPU (module docstring)."""
    if timed:
        device_sync()
    previous = _current[0]
    _current[0] = name
    start = time.monotonic()
    try:
        yield
        if timed:
            device_sync()
    finally:
        _current[0] = previous
        if timed:
            _waited[0] += time.monotonic() - start


def take_waited() -> float:
    """Seconds spent in timed collectives since the last call."""
    waited, _waited[0] = _waited[0], 0.0
    return waited


def current_collective() -> str:
    return _current[0]


def format_stacks() -> str:
    """Every thread's Python stack, the training thread first."""
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sorted(sys._current_frames().items(), key=lambda kv: names.get(kv[0]) != "MainThread")
    return "\n".join(f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in frames)


WARMING_FLOORS = 5       # a warming step's limit, in watchdog floors


class Watchdog:
    """A step started with ``warming=True`` (the first step of a run or of a curriculum phase:
    torch.compile builds flex_attention's kernels for the new row length, tens of seconds per
    shape on a GPU) may run ``WARMING_FLOORS`` x the floor before a dump, and its duration does
    not enter the median."""

    def __init__(self, rank: int, out_dir: str, multiple: float, floor_s: float, history: int = 50):
        self.rank, self.multiple, self.floor_s = rank, multiple, floor_s
        self.path = Path(out_dir) / "watchdog" / f"rank{rank:05d}.txt"
        self.durations = deque(maxlen=history)
        self.step: Optional[int] = None
        self.started = 0.0
        self.warming = False
        self.dumped_step: Optional[int] = None
        self.dumps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vist2-watchdog", daemon=True)
        self._poll = min(1.0, floor_s / 4)
        self._thread.start()

    def step_started(self, step: int, warming: bool = False) -> None:
        self.started, self.warming, self.step = time.monotonic(), warming, step

    def step_finished(self) -> float:
        """-> the step's duration in seconds."""
        took = time.monotonic() - self.started
        if not self.warming:
            self.durations.append(took)
        self.step = None
        return took

    def threshold(self) -> float:
        if self.warming:
            return WARMING_FLOORS * self.floor_s
        if not self.durations:
            return self.floor_s
        return max(self.floor_s, self.multiple * statistics.median(self.durations))

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            step = self.step
            if step is None or step == self.dumped_step:
                continue
            elapsed, limit = time.monotonic() - self.started, self.threshold()
            if elapsed > limit and step == self.step:
                self.dumped_step = step
                self._dump(step, elapsed, limit)

    def _dump(self, step: int, elapsed: float, limit: float) -> None:
        where = current_collective()
        head = (f"watchdog: rank {self.rank} step {step} has run {elapsed:.1f} s (limit {limit:.1f} s = "
                f"max(train.health.watchdog_floor_s, watchdog_multiple x median step time)); in "
                f"collective: {where}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {head}\n{format_stacks()}\n")
        self.dumps += 1
        print(f"{head}; Python stacks in {self.path}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
