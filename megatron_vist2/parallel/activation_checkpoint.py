"""Activation checkpointing, applied from outside the model (the model code stays plain).

``full``: each decoder block keeps only its input and recomputes the rest in backward.
``selective``: only each block's attention (projections + the masked attention) is recomputed:
less memory saved, less recompute. The module's ``forward`` is replaced by a checkpointed call of
itself (torch.utils.checkpoint, non-reentrant), and the module stays where it is: parameter
names (``named_parameters``, which DeepSpeed's shards, tensors.json, resharding, freezing and
lr multipliers go by) and state-dict names do not depend on the mode. (PyTorch's
checkpoint_wrapper would insert a ``_checkpoint_wrapped_module`` level into every name below it:
a checkpoint saved with recomputation would not load into a run without it.)

Dropout: the recompute must draw the masks the forward drew, or the gradients are those of
another network. PyTorch's checkpoint restores the default CPU/CUDA generators (hidden dropout
without sequence parallelism), but attention dropout and sequence-parallel hidden dropout draw
from megatron's tracked ``model-parallel-rng`` stream (parallel/random.py), which the forward has
advanced by the time backward runs. ``context_fn`` below runs each recompute with the tracked
streams as they were at that forward (megatron's own ``tensor_parallel.checkpoint`` does the same)
and leaves them as they were before the recompute.
"""
from __future__ import annotations

import contextlib
import typing

import torch.utils.checkpoint
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from ..config.schema import ActivationCheckpointing

MODES = typing.get_args(ActivationCheckpointing)


@contextlib.contextmanager
def _tracked_streams(states: dict):
    tracker = get_cuda_rng_tracker()
    now = dict(tracker.get_states())
    tracker.set_states(dict(states))          # a copy: the recompute's forks replace its entries
    try:
        yield
    finally:
        tracker.set_states(now)


def tracked_rng_contexts():
    """``context_fn`` of torch.utils.checkpoint, called at each checkpointed forward: (nothing
    around the forward, the forward's tracked RNG streams around its recompute)."""
    return contextlib.nullcontext(), _tracked_streams(dict(get_cuda_rng_tracker().get_states()))


def _recompute_in_backward(module) -> None:
    forward = module.forward

    def checkpointed(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False,
                                                 context_fn=tracked_rng_contexts, **kwargs)
    module.forward = checkpointed             # an instance attribute: the class is untouched


def apply_activation_checkpointing(model, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode '{mode}' is not one of {MODES}")
    if mode == "none":
        return
    for block in model.layers.values():
        _recompute_in_backward(block if mode == "full" else block.attention)
