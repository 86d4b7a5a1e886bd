"""Make megatron-core's tensor-parallel code run on CPU-only machines (gloo). Inactive when CUDA
is present. One place for every such shim (../docs: stack notes); add new ones here.

Shims:
  - ``torch.cuda.current_device`` -> the CPU device: megatron allocates gather buffers and RoPE
    tables on ``torch.cuda.current_device()`` (e.g. the aligner's gathered output at TP > 1).
  - megatron's RNG tracker (named random streams for dropout inside tensor-parallel regions)
    keeps CUDA generator states; on the CPU the same tracker API keeps CPU generator states.
"""
from __future__ import annotations

import contextlib

import torch
from megatron.core.tensor_parallel import random as megatron_random

_installed = False


class CpuRNGStatesTracker(megatron_random.CudaRNGStatesTracker):
    """megatron's tracker over ``torch.get_rng_state``/``set_rng_state``: ``fork(name)`` runs its
    body on stream ``name`` and leaves the default stream where it was."""

    def add(self, name, seed):
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name=megatron_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise ValueError(f"rng state {name} is not added (call parallel.random.seed_runtime_rng)")
        default = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(default)


def install() -> bool:
    """Install the shims once if CUDA is unavailable; return whether they are active."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        torch.cuda.current_device = lambda: torch.device("cpu")
        megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
        _installed = True
    return True
