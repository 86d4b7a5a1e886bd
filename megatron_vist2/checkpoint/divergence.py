"""A diverged run never leaves a checkpoint called good.

What makes a checkpoint good (the rule every save follows, manager.py):
- the step it saves was applied (a step whose loss or gradient was non-finite is skipped by run
  health, and no checkpoint is saved while steps are skipped: the save waits for the next
  applied step);
- its weights are finite on every rank (``check_weights``);
- its weights' norm is sane: at most ``checkpoint.max_weight_growth`` times the norm this run
  started from (the initial or resumed weights). A learning rate that blows the weights up to
  |w| ~ 1e30 in one step leaves them finite (the next step's loss is not), so finiteness alone
  would save them and later name them "the last good checkpoint".

``check_weights`` runs as one collective with one host sync per save (the per-parameter norms
are stacked on the device first; only a non-finite norm costs an exact second look). A run that
stops because it diverged names the last good checkpoint and the way back (``diverged``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from .format import read_latest

ADVICE = ("with a lower optim.lr, more optim.warmup_steps or optim.grad_clip > 0 (a resumed run applies "
          "the new values from the resumed step)")


def _local_tensors(module) -> List[torch.Tensor]:
    """This rank's share of the weights (ZeRO-3: its partitions)."""
    out = []
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t.data
        if t.numel():
            out.append(t)
    return out


def _sum_of_squares(module, device) -> torch.Tensor:
    """Collective: the sum of squares of every rank's weights (replicated weights counted once per
    rank that holds them, the same way at every call), fp64, without a host sync: one fused norm
    kernel over the parameters (0.18 s/GiB on a CPU core; the largest |w| would take 2.8 s)."""
    tensors = _local_tensors(module)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if tensors:
        total = torch.stack(torch._foreach_norm(tensors, 2)).double().square().sum()
    if dist.is_initialized():
        dist.all_reduce(total)
    return total


def _non_finite_anywhere(module, device) -> bool:
    """Collective, exact (the slow path, only when the norm is not finite)."""
    bad = torch.tensor(float(any(not bool(torch.isfinite(t).all()) for t in _local_tensors(module))),
                       device=device)
    if dist.is_initialized():
        dist.all_reduce(bad)
    return bad.item() > 0


def check_weights(module, step: int, save_dir: str, device, start_norm: Optional[float] = None,
                  max_growth: float = 0.0) -> float:
    """Collective, before anything is written: CheckpointError on every rank when any rank holds a
    non-finite weight, or when the weights' norm exceeds ``max_growth`` x ``start_norm`` (both
    given, max_growth > 0). -> the norm. One host sync when the norm is finite; a non-finite norm
    (a NaN/inf weight, or weights so large their squares overflow) is then told apart exactly."""
    norm = _sum_of_squares(module, device).item() ** 0.5
    if not math.isfinite(norm) and _non_finite_anywhere(module, device):
        _refuse(f"the weights hold NaN/inf after step {step}", save_dir)
    if start_norm and max_growth > 0 and not norm <= max_growth * start_norm:
        size = f"is {norm:.3g}, {norm / start_norm:.3g}x" if math.isfinite(norm) else \
            "overflows fp32 (above 1.8e19; the weights are finite but huge), against"
        _refuse(f"the weights' norm after step {step} {size} the {start_norm:.3g} this run started from "
                f"(checkpoint.max_weight_growth = {max_growth:g})", save_dir)
    return norm


def weights_norm(module, device) -> float:
    """The norm ``check_weights`` compares against (collective, at the start of a run)."""
    return _sum_of_squares(module, device).item() ** 0.5


def _refuse(what: str, save_dir: str) -> None:
    latest = read_latest(Path(save_dir))
    raise CheckpointError(
        f"{what} (training diverged): not saved as a checkpoint. "
        + (f"The last good checkpoint is {Path(save_dir) / latest}: restart from it {ADVICE}"
           if latest else f"No checkpoint was saved before: restart {ADVICE}"))


def diverged(reason: str, save_dir: str) -> None:
    """Training diverged (``reason``): stop with the way back (the last complete checkpoint,
    which the rules above guarantee is good)."""
    latest = read_latest(Path(save_dir))
    raise CheckpointError(
        f"{reason}; nothing was saved from this point. "
        + (f"Restart from the last good checkpoint ({Path(save_dir) / latest}; auto-resume picks it) "
           if latest else "No checkpoint was saved before. Restart ") + ADVICE)
