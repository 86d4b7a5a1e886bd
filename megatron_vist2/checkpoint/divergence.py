"""A diverged run never leaves a checkpoint called good: weights with NaN/inf are never saved
(``refuse_non_finite``, collective, before anything is written), and a run that stops because it
diverged names the last good checkpoint and the way back (``raise_diverged``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .format import read_latest


def refuse_non_finite(module, step: int, save_dir: str, device) -> None:
    """Collective: every rank checks its own parameters (ZeRO-3: its partitions); any NaN/inf on
    any rank -> CheckpointError on every rank, before anything is written."""
    import torch
    import torch.distributed as dist
    bad = torch.zeros((), dtype=torch.float32, device=device)
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t.data
        # a sum is non-finite when any element is (or, rarely, on overflow: then the exact
        # check); one pass without a mask tensor: 25x faster than isfinite().all() on a CPU
        if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            bad.fill_(1.0)
            break
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() > 0:
        latest = read_latest(Path(save_dir))
        raise CheckpointError(
            f"the weights hold NaN/inf after step {step} (training diverged): not saved as a "
            f"checkpoint. " + (f"The last good checkpoint is {Path(save_dir) / latest}: restart from it "
                               f"with a lower optim.lr (or more optim.warmup_steps, optim.grad_clip)"
                               if latest else "No checkpoint was saved before: restart with a lower "
                               "optim.lr (or more optim.warmup_steps, optim.grad_clip)"))


def raise_diverged(reason: str, save_dir: str) -> None:
    """Training diverged (``reason``): stop with the way back (the last complete checkpoint,
    which refuse_non_finite guarantees holds finite weights)."""
    latest = read_latest(Path(save_dir))
    raise CheckpointError(
        f"{reason}; nothing was saved from this point. "
        + (f"Restart from the last good checkpoint ({Path(save_dir) / latest}; auto-resume picks it) "
           if latest else "No checkpoint was saved before. Restart ")
        + "with a lower optim.lr, more optim.warmup_steps or optim.grad_clip > 0")
