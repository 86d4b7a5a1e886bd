"""Random streams for dropout under tensor and pipeline parallelism (megatron-core's scheme).

  - default generator: ``seed + 100 * pipeline_rank``. Equal on every tensor-parallel rank, so
    dropout on replicated activations (the residual stream without sequence parallelism) keeps
    them replicated, and a TP2 run draws exactly the masks a TP1 run draws.
  - megatron's tracked ``model-parallel-rng`` stream: ``seed + 2718 + tensor_parallel_rank``.
    Used inside tensor-parallel regions (attention probabilities of this rank's heads,
    sequence-parallel slices of the residual stream), where ranks must draw independent masks.
Model weights do not use either: models/vist2.py seeds each part from its name.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel


def seed_runtime_rng(seed: int) -> None:
    """Call once per process after the process groups exist and the model is built."""
    torch.manual_seed(seed + 100 * parallel_state.get_pipeline_model_parallel_rank())
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
