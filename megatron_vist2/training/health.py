"""Run health: skipped non-finite steps, loss spikes, the per-rank step-time report and the
watchdog (docs/training.md, "Run health"). ``RunHealth`` is what the training loop talks to.

Non-finite steps (``NonFiniteGuard``). Every rank notes, on the run's device and without a sync,
whether a gradient it computed was non-finite (a hook on each trainable parameter: the local
gradient of each micro-batch, before DeepSpeed reduces it - DeepSpeed reduces inside the backward,
so after it no rank could say whose gradient it was; a NaN/inf there makes the reduced gradient
and the gradient norm non-finite) and, on the last pipeline stage, whether its summed loss was.
The hook costs one reduction per gradient, a float64 sum added into one accumulator: the sum is
non-finite exactly when an element is (NaN and inf propagate; finite fp32/bf16 values cannot
overflow a float64 sum), with no temporary the size of the gradient; whether it is finite is
asked once per step. Before the optimizer update (the final micro-batch's ``engine.step()``) one all-reduce
over the world of a (world x 2) flag table tells every rank which ranks saw what. If any flag is
set, the step is skipped on every rank: ``engine.step()`` still runs (its collectives stay matched
on every rank, and it clears the gradients), but the torch optimizer's ``step`` is gated off, so
weights and optimizer state (Adam's moments and step counts) are untouched, and the learning-rate
scheduler's state is restored, so the schedule does not advance. DeepSpeed's own overflow skip
(ZeRO 1-3, bf16: a non-finite norm found after reduction) is reported the same way. The batch is
consumed (the step counter and the data position advance: it is skipped, not retried).

Loss spikes (``SpikeDetector``): z = (loss - mean) / std over the last ``spike_window`` accepted
losses; a spike is not added to the window. The step's loss is the same number on every rank
(all-reduced by the schedule), so every rank decides alike without a collective. With
``spike_mode=rollback`` every rank reloads the newest checkpoint of the run and reads on from the
spike's batch + ``spike_skip_batches``; the step counter goes back to the checkpoint's.

Run health decides; the checkpoint manager acts (checkpoint/manager.py): ``end_step`` returns a
``StepHealth`` (skipped, diverged, a rollback asked for), and the manager never saves a skipped
step, stops a diverged run naming the last good checkpoint, and does the rollback.

A run that did not train (``did_not_train``): more than half of the steps it ran were skipped.
It exits non-zero after its summary (train.py), which says how many steps were skipped.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .faults import Faults
from .watchdog import Watchdog, collective, take_waited


@dataclass
class StepHealth:
    """The verdict on one step that the checkpoint manager acts on (checkpoint/manager.py
    ``StepVerdict``): never save a skipped step, stop a diverged run, roll back on a spike."""
    skipped: bool = False                   # the update was not applied (non-finite loss or gradient)
    diverged: Optional[str] = None          # too many skips in a row: why the run stops
    # a loss spike with spike_mode=rollback: its description, metrics, and the sample to read on from
    spike: Optional[str] = None
    spike_values: Optional[Dict[str, float]] = None
    rollback_to_sample: Optional[int] = None


class NonFiniteGuard:
    def __init__(self, engine, device, rank: int, world: int):
        self.engine, self.device, self.rank, self.world = engine, device, rank, world
        self.grad_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.skip = False
        self.loss_ranks: List[int] = []
        self.grad_ranks: List[int] = []
        self.deepspeed_overflow = False
        self._saved = None
        for p in engine.module.parameters():
            if p.requires_grad:
                p.register_hook(self._check_grad)
        optimizer = engine.basic_optimizer        # the torch optimizer DeepSpeed steps
        inner = optimizer.step

        @functools.wraps(inner)                   # keeps torch's scheduler marker: no false warning
        def gated(*args, **kwargs):
            return None if self.skip else inner(*args, **kwargs)
        optimizer.step = gated                    # an instance attribute: not in its state_dict

    def _check_grad(self, grad: torch.Tensor) -> None:
        self.grad_sum.add_(grad.detach().sum(dtype=torch.float64))

    def before_update(self, loss_sum: Optional[torch.Tensor]) -> None:
        """The schedule calls this before the update (every rank; ``loss_sum`` on the last stage)."""
        flags = torch.zeros(self.world, 2, device=self.device)
        if loss_sum is not None:
            flags[self.rank, 0] = (~torch.isfinite(loss_sum)).float()
        flags[self.rank, 1] = (~torch.isfinite(self.grad_sum)).float()
        with collective("non-finite flag all_reduce (world)", timed=True):
            dist.all_reduce(flags)
        self.grad_sum.zero_()
        bad = flags.cpu()
        self.loss_ranks = [r for r in range(self.world) if bad[r, 0] > 0]
        self.grad_ranks = [r for r in range(self.world) if bad[r, 1] > 0]
        self.skip = bool(self.loss_ranks or self.grad_ranks)
        scheduler = self.engine.lr_scheduler
        self._saved = None
        if self.skip and scheduler is not None:
            self._saved = (scheduler.state_dict(), [g["lr"] for g in scheduler.optimizer.param_groups])

    def after_update(self) -> None:
        self.deepspeed_overflow = bool(getattr(self.engine.optimizer, "overflow", False))
        if self._saved is not None:               # the schedule does not advance on a skipped step
            state, lrs = self._saved
            scheduler = self.engine.lr_scheduler
            scheduler.load_state_dict(state)
            for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
        self.skip = self.skip or self.deepspeed_overflow
        self._saved = None

    def take(self) -> Tuple[bool, str]:
        """-> (was the last step skipped, what was non-finite where)."""
        skipped, self.skip = self.skip, False
        parts = []
        if self.loss_ranks:
            parts.append(f"loss on rank{'s' if len(self.loss_ranks) > 1 else ''} {_ranks(self.loss_ranks)}")
        if self.grad_ranks:
            parts.append(f"gradients on rank{'s' if len(self.grad_ranks) > 1 else ''} {_ranks(self.grad_ranks)}")
        if self.deepspeed_overflow and not parts:
            parts.append("gradient norm (DeepSpeed's overflow check, after reduction)")
        return skipped, "; ".join(parts)


def _ranks(ranks: List[int]) -> str:
    return ", ".join(map(str, ranks))


class SpikeDetector:
    def __init__(self, window: int, threshold: float):
        self.window, self.threshold = window, threshold
        self.recent = deque(maxlen=window)

    def zscore(self, loss: float) -> Optional[float]:
        """z of ``loss`` against the window (None until the window is full)."""
        if len(self.recent) < self.window:
            return None
        mean = statistics.fmean(self.recent)
        std = statistics.pstdev(self.recent)
        return (loss - mean) / max(std, 1e-12 * max(abs(mean), 1.0))

    def observe(self, loss: float) -> Optional[float]:
        """-> z when ``loss`` is a spike (it is then kept out of the window), else None."""
        z = self.zscore(loss)
        if z is not None and z > self.threshold:
            return z
        self.recent.append(loss)
        return None


class RunHealth:
    """The training loop's side of run health: ``start_step`` before a step, ``end_step`` after it
    (-> a rollback target or None), ``close`` at the end."""

    def __init__(self, run, env):
        self.run, self.cfg, self.h = run, run.cfg, run.cfg.train.health
        self.rank, self.world, self.device = env.rank, env.world_size, env.device
        self.faults = Faults(env.rank)
        self.faults.install_grad_fault(run.engine.module)       # before the guard's hooks
        self.guard = NonFiniteGuard(run.engine, env.device, env.rank, env.world_size)
        run.schedule.update_guard = self.guard
        self.loss_fn = None                                      # set per step (faults)
        self.spikes = SpikeDetector(self.h.spike_window, self.h.spike_zscore) \
            if self.h.spike_mode != "off" else None
        self.watchdog = Watchdog(env.rank, self.cfg.logging.dir, self.h.watchdog_multiple,
                                 self.h.watchdog_floor_s) if self.h.watchdog_multiple > 0 else None
        self.consecutive = self.total_skips = 0
        self.first_skipped: Optional[int] = None
        self.busy, self.times = [], []                           # since the last report
        self._started = 0.0

    def start_step(self, step: int, loss_fn, warming: bool = False):
        """Before step ``step`` (1-based; ``warming``: the first at a new row length, which may
        compile: watchdog.py); -> the loss function to train it with."""
        self._started = time.monotonic()
        take_waited()
        if self.watchdog:
            self.watchdog.step_started(step, warming)
        self.faults.at(step)                                     # tests: a stalled rank
        return self.faults.loss_fn(loss_fn)

    def end_step(self, step: int, loss: float, consumed: int) -> StepHealth:
        """After step ``step``: count a skip (too many in a row: the run diverged), watch for a
        spike; -> the verdict for the checkpoint manager."""
        took = time.monotonic() - self._started
        if self.watchdog:
            self.watchdog.step_finished()
        self.times.append(took)
        self.busy.append(took - take_waited())
        log = self.run.log
        skipped, what = self.guard.take()
        if skipped:
            self.consecutive += 1
            self.total_skips += 1
            self.first_skipped = self.first_skipped or step
            log.print(f"step {step}: skipped, non-finite {what}: weights, optimizer state and "
                      f"learning-rate schedule unchanged, batch consumed ({self.consecutive} in a row, "
                      f"{self.total_skips} in this run)")
            log.log(step, {"health/skipped_step": 1.0, "health/nonfinite_loss": float(bool(self.guard.loss_ranks)),
                           "health/nonfinite_grad": float(bool(self.guard.grad_ranks or self.guard.deepspeed_overflow)),
                           "health/consecutive_skips": self.consecutive, "health/skips_total": self.total_skips})
            diverged = None
            if self.consecutive >= self.h.max_consecutive_skips:
                diverged = (f"{self.consecutive} steps in a row ({self.first_skipped}..{step}, "
                            f"train.health.max_consecutive_skips) had a non-finite {what}: training "
                            f"diverged and stops")
            return StepHealth(skipped=True, diverged=diverged)
        self.consecutive, self.first_skipped = 0, None
        return self._spike(step, self.faults.reported_loss(loss), consumed)

    def _spike(self, step, loss, consumed) -> StepHealth:
        """A spike is logged here, or (``spike_mode=rollback``) handed to the checkpoint manager,
        which rolls back to the newest checkpoint and logs it."""
        if self.spikes is None or not math.isfinite(loss):
            return StepHealth()
        z = self.spikes.observe(loss)
        if z is None:
            return StepHealth()
        h = self.h
        values = {"health/loss_spike": loss, "health/loss_spike_zscore": z}
        text = (f"step {step}: loss spike {loss:.4f} (z = {z:.1f} over the last {h.spike_window} losses, "
                f"threshold {h.spike_zscore:g})")
        if h.spike_mode == "rollback":
            return StepHealth(spike=text, spike_values=values,
                              rollback_to_sample=consumed + h.spike_skip_batches * self.cfg.parallel.global_batch_size)
        self.run.log.print(text)
        self.run.log.log(step, values)
        return StepHealth()

    def report_step_times(self, step: int) -> None:
        """Collective (every rank, at every log line): the slowest rank and its lag vs the median."""
        if not self.times:
            return
        mine = torch.tensor([statistics.fmean(self.busy), statistics.fmean(self.times)], device=self.device)
        parts = [torch.zeros_like(mine) for _ in range(self.world)]
        with collective("step-time all_gather (world)", timed=True):
            dist.all_gather(parts, mine)
        table = torch.stack(parts).cpu()
        take_waited()
        self.busy, self.times = [], []
        busy = table[:, 0].tolist()
        slowest = max(range(self.world), key=busy.__getitem__)
        median = statistics.median(busy)
        lag = busy[slowest] - median
        if self.world > 1:                     # one process has no straggler to name
            self.run.log.print(f"step {step}: step time {statistics.median(table[:, 1].tolist()):.3f} s; busy time "
                               f"(without waiting in marked collectives) median {median:.3f} s, slowest rank "
                               f"{slowest} {busy[slowest]:.3f} s (+{lag:.3f} s, {lag / max(median, 1e-9):+.0%})")
        self.run.log.log(step, {"health/busy_time_median_s": median, "health/busy_time_max_s": busy[slowest],
                                "health/slowest_rank": slowest, "health/straggler_lag_s": lag})

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.close()


def did_not_train(skipped: int, steps: int) -> Optional[str]:
    """The rule for a run that did not train: more than half of the ``steps`` it ran were skipped
    (-> why, for its exit; None: it trained)."""
    if skipped * 2 <= steps:
        return None
    return (f"{skipped} of the {steps} steps this run ran were skipped (a non-finite loss or gradient): "
            f"the run did not train. Its weights are those of its last applied step; restart from the "
            f"last good checkpoint with a lower optim.lr, more optim.warmup_steps or optim.grad_clip > 0, "
            f"or check the data")
