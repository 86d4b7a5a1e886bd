"""Counts what DeepSpeed reduces: the elements handed to reduction collectives (all-reduce,
reduce, reduce-scatter), by wrapping torch.distributed's functions before any engine exists
(DeepSpeed's communication backend looks them up, or captures them when it is created). The
parity worker reads it during training steps; the planner's data-parallel traffic is checked
against it (tests/distributed/test_parity_2ranks.py)."""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist

# name -> how to find the reduced input among the call's arguments
_INPUTS = {
    "all_reduce": lambda a, k: k.get("tensor", a[0] if a else None),
    "reduce": lambda a, k: k.get("tensor", a[0] if a else None),
    "all_reduce_coalesced": lambda a, k: k.get("tensors", a[0] if a else None),
    "reduce_scatter": lambda a, k: k.get("input_list", a[1] if len(a) > 1 else None),
    "reduce_scatter_tensor": lambda a, k: k.get("input", a[1] if len(a) > 1 else None),
    "_reduce_scatter_base": lambda a, k: k.get("input", a[1] if len(a) > 1 else None),
}


def _numel(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    return 0


class ReductionCounter:
    """``install()`` once per process, then ``take()`` -> elements reduced since the last take."""

    def __init__(self):
        self.elements = 0

    def install(self) -> None:
        for name, find in _INPUTS.items():
            fn = getattr(dist, name, None)
            if fn is None or getattr(fn, "_counted", False):
                continue

            @functools.wraps(fn)
            def counted(*args, _fn=fn, _find=find, **kwargs):
                self.elements += _numel(_find(args, kwargs))
                return _fn(*args, **kwargs)
            counted._counted = True
            setattr(dist, name, counted)
        # DeepSpeed's communication backend keeps the reduce-scatter it found when it was created
        # (deepspeed/comm/torch.py): in a process that built an engine before (a rank-pool job
        # after others) it must be looked up again, or ZeRO-2/3's reductions go uncounted
        from deepspeed.comm import comm as ds_comm
        backend = getattr(ds_comm, "cdb", None)
        if backend is not None and hasattr(backend, "get_reduce_scatter_function"):
            backend.reduce_scatter_function = backend.get_reduce_scatter_function()

    def take(self) -> int:
        elements, self.elements = self.elements, 0
        return elements


# One per process: the wrappers installed by a rank-pool job stay for the jobs after it, and they
# count into this object (a job's own instance would never see them)
COUNTER = ReductionCounter()
