"""Full (unsharded) parameters from a tensor-parallel model: every rank gets the whole tensor (the
parity tests compare them with the single-process reference)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def full_parameters(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """name -> full tensor. Parameters megatron marks ``tensor_model_parallel`` are all-gathered
    over the tensor-parallel group along their ``partition_dim``; the others are replicated.
    (Under ZeRO-3, call inside ``deepspeed.zero.GatheredParameters`` first.)"""
    group = parallel_state.get_tensor_model_parallel_group()
    size = parallel_state.get_tensor_model_parallel_world_size()
    out = {}
    for name, p in module.named_parameters():
        t = p.detach()
        if size > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(size)]
            dist.all_gather(parts, t.contiguous(), group=group)
            t = torch.cat(parts, dim=p.partition_dim)
        out[name] = t.clone()
    return out
