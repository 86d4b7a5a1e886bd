"""megatron-core's parallel state under the names DeepSpeed calls (the old Megatron ``mpu`` API).

DeepSpeed asks ``mpu`` for the data-parallel group (gradient averaging, ZeRO partitioning: with
pipeline parallelism, the stage's own data-parallel group) and the model-parallel group, over
which it sums squared gradient norms for clipping. That group is tensor x pipeline, so the norm
covers every stage; the model-parallel *rank* DeepSpeed uses to count replicated parameters once
is the tensor-parallel rank (a replicated weight exists once per stage, on each TP rank).
"""
from __future__ import annotations

from megatron.core import parallel_state


class MegatronMPU:
    def __init__(self):
        for name in dir(parallel_state):
            if name.startswith("get_"):
                setattr(self, name, getattr(parallel_state, name))
        self.get_model_parallel_rank = parallel_state.get_tensor_model_parallel_rank
        self.get_model_parallel_world_size = parallel_state.get_tensor_model_parallel_world_size
        self.get_model_parallel_group = parallel_state.get_model_parallel_group
