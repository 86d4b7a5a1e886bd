"""Tests only: the run-health faults a test injects through ``MEGATRON_VIST2_FAULT`` (parsed, with
every other fault, by checkpoint/faults.py: ``KIND:STEPS[:RANK[:ARG]]``).

- ``nan-loss``: the rank's summed loss becomes NaN (its gradients stay finite: only the loss
  check can catch it). The rank must hold the last pipeline stage.
- ``nan-grad``: one gradient element of the rank's first trainable parameter becomes NaN in
  every backward of the step (the loss stays finite: only the gradient check can catch it).
- ``stall``: the rank sleeps ARG seconds (default 5) before the step's first collective.
- ``spike``: the step's reported loss is multiplied by ARG (default 100) for the spike detector
  (the weights are untouched; the detector sees what a real spike shows it); once.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..checkpoint.faults import TRAINING_KINDS, Fault, from_env, parse


class Faults:
    """The faults of this process (none outside tests): the trainer calls ``at(step)`` first."""

    def __init__(self, rank: int, spec: Optional[str] = None):
        self.rank = rank
        self.faults = from_env(TRAINING_KINDS) if spec is None else \
            [f for f in parse(spec) if f.kind in TRAINING_KINDS]
        self.step = 0

    def _hit(self, kind: str) -> Optional[Fault]:
        return next((f for f in self.faults if f.kind == kind and f.hits(self.step, self.rank)), None)

    def at(self, step: int) -> None:
        self.step = step
        fault = self._hit("stall")
        if fault:
            time.sleep(fault.arg or 5.0)

    def loss_fn(self, fn):
        """``fn`` (the training loss), with NaN added to its summed loss when a fault hits."""
        if not self.faults:
            return fn

        def with_fault(logits, batch):
            total, stats = fn(logits, batch)
            if self._hit("nan-loss"):
                total = total + float("nan")           # d(total + nan) / d(total) = 1: finite gradients
            return total, stats
        return with_fault

    def install_grad_fault(self, module: torch.nn.Module) -> None:
        """Before any other gradient hook (hooks run in the order they were registered)."""
        if not any(f.kind == "nan-grad" for f in self.faults):
            return
        first = next(p for p in module.parameters() if p.requires_grad)

        def poison(grad):
            if not self._hit("nan-grad"):
                return None
            grad = grad.clone()
            grad.view(-1)[0] = float("nan")
            return grad
        first.register_hook(poison)

    def reported_loss(self, loss: float) -> float:
        """Once per fault: after a rollback the same step number comes again."""
        fault = self._hit("spike")
        if fault is None:
            return loss
        self.faults.remove(fault)
        return loss * (fault.arg or 100.0)
