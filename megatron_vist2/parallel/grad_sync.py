"""Gradient fixes that tensor parallelism needs beyond megatron-core's layers."""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def sum_partial_grads_over_tensor_parallel(model: torch.nn.Module) -> int:
    """Parameters marked ``tp_partial_grad`` (replicated weights applied to a rank's local heads,
    e.g. QK-norm) get each rank's partial gradient summed over the tensor-parallel group during
    backward. Returns how many parameters were hooked (0 at TP = 1)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return 0
    group = parallel_state.get_tensor_model_parallel_group()

    def hook(grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    hooked = 0
    for p in model.parameters():
        if getattr(p, "tp_partial_grad", False) and p.requires_grad:     # frozen: no gradient to sum
            p.register_hook(hook)
            hooked += 1
    return hooked
