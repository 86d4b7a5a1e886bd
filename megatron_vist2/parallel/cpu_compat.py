"""Make megatron-core's tensor-parallel code run on CPU-only machines (gloo). Inactive when CUDA
is present. One place for every such shim (../docs: stack notes); add new ones here.

Shims:
  - ``torch.cuda.current_device`` -> the CPU device: megatron allocates gather buffers and RoPE
    tables on ``torch.cuda.current_device()`` (e.g. the aligner's gathered output at TP > 1).
"""
from __future__ import annotations

import torch

_installed = False


def install() -> bool:
    """Install the shims once if CUDA is unavailable; return whether they are active."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        torch.cuda.current_device = lambda: torch.device("cpu")
        _installed = True
    return True
