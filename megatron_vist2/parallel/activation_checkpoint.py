"""Activation checkpointing, applied from outside the model (the model code stays plain).

``full``: each decoder block keeps only its input and recomputes the rest in backward.
``selective``: only each block's attention (projections + the masked attention) is recomputed:
less memory saved, less recompute. PyTorch's checkpoint_wrapper keeps state-dict names unchanged,
so checkpoints do not depend on the mode.
"""
from __future__ import annotations

import typing

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                         checkpoint_wrapper)

from ..config.schema import ActivationCheckpointing

MODES = typing.get_args(ActivationCheckpointing)


def apply_activation_checkpointing(model, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode '{mode}' is not one of {MODES}")
    if mode == "none":
        return
    for key, block in model.layers.items():
        if mode == "full":
            model.layers[key] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        else:
            block.attention = checkpoint_wrapper(block.attention,
                                                 checkpoint_impl=CheckpointImpl.NO_REENTRANT)
