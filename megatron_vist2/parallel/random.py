"""Random streams for dropout under tensor and pipeline parallelism (megatron-core's scheme, as
Megatron-LM's ``_set_random_seed``: every stream of pipeline stage p starts from
``s = seed + 100 * p``).

  - default generator (CPU, and CUDA on a GPU): ``s``. Equal on every tensor-parallel rank, so
    dropout on replicated activations (the residual stream without sequence parallelism) keeps
    them replicated, and a TP2 run draws exactly the masks a TP1 run draws; different on each
    pipeline stage, so stages do not repeat each other's masks.
  - megatron's tracked ``model-parallel-rng`` stream: ``s + 2718 + tensor_parallel_rank``.
    Used inside tensor-parallel regions (attention probabilities of this rank's heads,
    sequence-parallel slices of the residual stream), where ranks must draw independent masks.
Model weights do not use either: models/vist2.py seeds each part from its name.

``model_parallel_cuda_manual_seed`` calls ``torch.cuda.manual_seed`` itself: it must get ``s``,
not ``seed``, or on a GPU every stage's default CUDA stream would restart from ``seed``.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel


def stage_seed(seed: int) -> int:
    """The seed of this rank's pipeline stage."""
    return seed + 100 * parallel_state.get_pipeline_model_parallel_rank()


def seed_runtime_rng(seed: int) -> None:
    """Call once per process after the process groups exist and the model is built."""
    s = stage_seed(seed)
    torch.manual_seed(s)
    tensor_parallel.model_parallel_cuda_manual_seed(s)
