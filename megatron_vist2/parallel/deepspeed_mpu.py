"""megatron-core's parallel state under the names DeepSpeed calls (the old Megatron ``mpu`` API).

DeepSpeed asks ``mpu`` for the model-parallel group (gradient norms and clipping across
tensor-parallel shards) and the data-parallel group (gradient averaging, ZeRO partitioning).
megatron-core 0.16 no longer has ``get_model_parallel_*``; with pipeline parallelism absent from
the trainer, model parallel means tensor parallel here.
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
        self.get_model_parallel_group = parallel_state.get_tensor_model_parallel_group
