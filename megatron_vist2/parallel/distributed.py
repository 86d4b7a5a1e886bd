"""Process groups: torch.distributed from the launcher's environment, then megatron-core's
tensor/pipeline/data-parallel groups. Called once per process, explicitly, by the entry point.

Launchers (torchrun, ``deepspeed``, ``launch.sh`` under SLURM) set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. A bare ``python`` run without them is a single process (world 1).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Dict

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from . import compat


_created: set = set()   # what init_distributed set up itself (shutdown tears down only that)


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_environment(tensor_parallel: int) -> Dict[str, str]:
    """Environment defaults of a GPU run, for the entry point to set before CUDA and NCCL start
    (a value already in the environment wins; on the CPU they change nothing):
      - ``CUDA_DEVICE_MAX_CONNECTIONS=1`` with tensor parallelism: one hardware work queue, so
        kernels start in the order they are issued and megatron's asynchronous tensor-parallel
        all-reduce overlaps the weight-gradient matmul (megatron warns without it);
      - ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``: micro-batches differ in their
        number of images, and the loss's fp32 logits are large: growable segments instead of
        fragmented fixed blocks;
      - ``TORCH_FR_BUFFER_SIZE`` and ``TORCH_NCCL_DUMP_ON_TIMEOUT``: NCCL's flight
        recorder, so a collective that times out dumps each rank's last collectives (which one
        hung; /tmp/nccl_trace_rank_<rank> unless TORCH_FR_DUMP_TEMP_FILE says where)."""
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
           "TORCH_FR_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    if tensor_parallel > 1:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    return env


def cuda_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device index of the rank with ``local_rank`` on a node that shows it ``visible``
    GPUs. Launchers that show every task the whole node (torchrun, the deepspeed launcher,
    examples/slurm/train.sbatch) give LOCAL_RANK < visible: device LOCAL_RANK. A scheduler that
    gives each task its own GPUs (SLURM ``--gpus-per-task=1``, ``--gpu-bind=per_task:1``) shows
    fewer: device LOCAL_RANK mod visible (0 with one GPU per task)."""
    if visible < 1:
        raise RuntimeError("CUDA is available but no device is visible (CUDA_VISIBLE_DEVICES?)")
    return local_rank if local_rank < visible else local_rank % visible


def local_cuda_device() -> torch.device:
    """This rank's GPU (``cuda_device_index`` of LOCAL_RANK and the visible devices)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", cuda_device_index(local_rank, torch.cuda.device_count()))


def init_distributed(tensor_parallel: int = 1, pipeline_parallel: int = 1,
                     timeout_minutes: int = 30, own: bool = True) -> DistEnv:
    """``own=False``: the caller (a test session, a notebook) keeps what is set up here, and no
    later ``shutdown()`` in this process tears it down."""
    if "RANK" not in os.environ:                      # bare single-process run
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = local_cuda_device() if cuda else torch.device("cpu")
    if cuda:
        if device.index != local_rank:
            # DeepSpeed takes its device from LOCAL_RANK (engine, ZeRO-3's partitioning): the same
            # index as ours, or "invalid device ordinal" on a node that shows this task fewer GPUs
            print(f"rank {rank}: LOCAL_RANK {local_rank} -> {device} ({torch.cuda.device_count()} "
                  f"visible device(s)); LOCAL_RANK set to {device.index} for DeepSpeed", flush=True)
            os.environ["LOCAL_RANK"] = str(device.index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if own:
            _created.add("process_group")
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    compat.install_cpu_shims()
    if not parallel_state.model_parallel_is_initialized():
        if own:
            _created.add("model_parallel")
        parallel_state.initialize_model_parallel(tensor_parallel, pipeline_parallel,
                                                 create_gloo_process_groups=False)
    have = (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size())
    if have != (tensor_parallel, pipeline_parallel):
        raise RuntimeError(f"this process already runs tensor_parallel={have[0]}, pipeline_parallel={have[1]}; "
                           f"asked for {tensor_parallel} x {pipeline_parallel}: call "
                           f"megatron.core.parallel_state.destroy_model_parallel() first")
    return DistEnv(rank, world, local_rank, device)


def shutdown() -> None:
    """Tear down what init_distributed created in this process, and only that: an entry point
    called inside a process whose caller set up the groups (a test session, a notebook) leaves
    them working for the caller."""
    if "model_parallel" in _created and parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if "process_group" in _created and dist.is_initialized():
        dist.destroy_process_group()
    _created.clear()
