"""Every patch of a third-party internal, in one place, each checked against the installed version.

megatron_vist2 relies on a few internals of torch, megatron-core and DeepSpeed that no public API
offers. Each patch below says why it exists; ``PATCHED`` lists every attribute they touch, and
each patch checks, when it is applied, that what it patches is still there: an upgrade that
renames one fails with the package, its version and the attribute named, not with a wrong number
(tests/unit/test_compat.py checks them all against the pinned versions).

  - CPU shims (``install_cpu_shims``, inactive when CUDA is present):
    ``torch.cuda.current_device`` -> the CPU device: megatron allocates gather buffers and RoPE
    tables on ``torch.cuda.current_device()`` (e.g. the aligner's gathered output at TP > 1);
    megatron's RNG tracker (named random streams for dropout inside tensor-parallel regions)
    keeps CUDA generator states; on the CPU the same tracker API keeps CPU generator states.
  - ZeRO-3 with pipeline stages (``install_zero3_stage_checks``): DeepSpeed's check that every
    rank traced the same modules runs over the stage's data-parallel group, not the world.
  - ZeRO-3 in 1F1B (``clear_backward_seen_flag``): advance the optimizer's micro-step after
    every backward (parallel/pipeline.py says why).
  - fp32 without ZeRO (``keep_fp32_grad_norm``): DeepSpeed's clipping drops the norm it computed.
  - Loading DeepSpeed's shards with ``weights_only`` (``load_checkpoints_safely``).
  - Inference at tensor-parallel size 1 (``plain_linears``): megatron's column/row-parallel
    linear forward as its two tensor ops, without its autograd Function and group look-ups.
  - Process groups of a finished run (``destroy_groups_but_world``): torch lists every group only
    in its private registry; a process that runs several jobs (the test suite's rank pool)
    destroys each job's groups, or every gloo group keeps its threads and sockets.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, List

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import random as megatron_random

_installed = False


@dataclass(frozen=True)
class Patched:
    package: str        # the distribution (for its version in the message)
    module: str
    attribute: str      # dotted below the module: "Class.method"


PATCHED: List[Patched] = [
    Patched("torch", "torch.cuda", "current_device"),
    Patched("megatron-core", "megatron.core.tensor_parallel.random", "CudaRNGStatesTracker"),
    Patched("megatron-core", "megatron.core.tensor_parallel.random", "_CUDA_RNG_STATE_TRACKER"),
    Patched("megatron-core", "megatron.core.tensor_parallel.random", "_CUDA_RNG_STATE_TRACKER_INITIALIZED"),
    Patched("megatron-core", "megatron.core.tensor_parallel.random", "_MODEL_PARALLEL_RNG_TRACKER_NAME"),
    Patched("deepspeed", "deepspeed.runtime.zero.partitioned_param_coordinator",
            "assert_ints_same_as_other_ranks"),
    Patched("deepspeed", "deepspeed.runtime.zero.stage3", "DeepSpeedZeroOptimizer_Stage3.clear_backward_seen_flag"),
    Patched("deepspeed", "deepspeed.runtime.engine", "DeepSpeedEngine.clip_fp32_gradients"),
    Patched("deepspeed", "deepspeed.runtime.engine", "DeepSpeedEngine.get_global_grad_norm"),
    Patched("deepspeed", "deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine",
            "TorchCheckpointEngine.load"),
    Patched("megatron-core", "megatron.core.tensor_parallel.layers", "ColumnParallelLinear.forward"),
    Patched("megatron-core", "megatron.core.tensor_parallel.layers", "RowParallelLinear.forward"),
    Patched("torch", "torch.distributed.distributed_c10d", "_world.pg_map"),
]


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def require(obj, attribute: str, package: str, where: str) -> None:
    """Fail with a clear message unless ``obj`` (``where`` names it) has ``attribute``."""
    if not hasattr(obj, attribute):
        raise RuntimeError(
            f"{package} {version_of(package)}: {where}.{attribute} is gone, and megatron_vist2 "
            f"patches it (parallel/compat.py); install the version setup.py pins or update the patch")


def check(p: Patched):
    """-> the patched attribute's owner, after checking that it has the attribute."""
    owner = importlib.import_module(p.module)
    path = p.attribute.split(".")
    where = p.module
    for name in path[:-1]:
        require(owner, name, p.package, where)
        owner, where = getattr(owner, name), f"{where}.{name}"
    require(owner, path[-1], p.package, where)
    return owner


def _check_all(module: str) -> None:
    for p in PATCHED:
        if p.module == module:
            check(p)


# ------------------------------------------------------------------ CPU shims
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


def install_cpu_shims() -> bool:
    """Install the CPU shims once if CUDA is unavailable; return whether they are active."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        _check_all("torch.cuda")
        _check_all("megatron.core.tensor_parallel.random")
        torch.cuda.current_device = lambda: torch.device("cpu")
        megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
        _installed = True
    return True


# ------------------------------------------------------------------ DeepSpeed
def _same_trace_within_data_parallel_group(ints: List[int]) -> None:
    """ZeRO-3 checks, while it records its first module trace, that every rank of the *world*
    saw the same modules (a broadcast from rank 0). Pipeline stages hold different modules by
    design; the ranks that must agree are the stage's data-parallel group, which partitions the
    same parameters. Same check, right group. (Ids are compared relative to the smallest:
    DeepSpeed numbers modules with a process-wide counter, which can start at different values
    on different ranks when a process has built other ZeRO-3 engines before.)"""
    group = parallel_state.get_data_parallel_group()
    seen = [None] * dist.get_world_size(group)
    base = min(ints, default=0)
    dist.all_gather_object(seen, [i - base for i in ints], group=group)
    if any(s != seen[0] for s in seen):
        raise RuntimeError(f"ZeRO-3 module traces differ between data-parallel ranks: {seen}")


def install_zero3_stage_checks() -> None:
    coordinator = check(Patched("deepspeed", "deepspeed.runtime.zero.partitioned_param_coordinator",
                                "assert_ints_same_as_other_ranks"))
    coordinator.assert_ints_same_as_other_ranks = _same_trace_within_data_parallel_group


def check_zero3_micro_steps() -> None:
    """ZeRO-3 must still offer the call ``clear_backward_seen_flag`` makes (else gradients of
    consecutive backwards would overwrite each other instead of adding up)."""
    _check_all("deepspeed.runtime.zero.stage3")


def clear_backward_seen_flag(optimizer) -> None:
    """Move ZeRO to its next accumulation micro-step (optimizers without the flag: nothing)."""
    clear = getattr(optimizer, "clear_backward_seen_flag", None)
    if clear is not None:
        clear()


def keep_fp32_grad_norm(engine) -> None:
    """Without ZeRO in fp32 DeepSpeed clips with clip_grad_norm_ but drops the norm it computed
    (get_global_grad_norm() stays None): the same call, its result kept for the logs."""
    from deepspeed.runtime.utils import clip_grad_norm_     # here: the CPU shims need no deepspeed
    _check_all("deepspeed.runtime.engine")
    require(engine, "_global_grad_norm", "deepspeed", "DeepSpeedEngine")

    def clip_and_keep():
        engine._global_grad_norm = float(clip_grad_norm_(parameters=engine.module.parameters(),
                                                         max_norm=engine.gradient_clipping(), mpu=engine.mpu))
    engine.clip_fp32_gradients = clip_and_keep


def load_checkpoints_safely(engine, safe_load: Callable) -> None:
    """DeepSpeed's own checkpoint reader loads with weights_only=False: read through ``safe_load``."""
    require(engine.checkpoint_engine, "load", "deepspeed", type(engine.checkpoint_engine).__name__)
    engine.checkpoint_engine.load = safe_load


# ------------------------------------------------------------------ inference at TP = 1
_plain_checked = False


def _column_forward(self, input_, weight=None, runtime_gather_output=None):
    out = torch.nn.functional.linear(input_, self.weight if weight is None else weight)   # = matmul(x, w.t())
    if self.skip_bias_add:
        return out, self.bias
    return (out + self.bias if self.bias is not None else out), None


def _row_forward(self, input_):
    out = torch.nn.functional.linear(input_, self.weight)
    if self.skip_bias_add:
        return out, self.bias
    return (out + self.bias if self.bias is not None else out), None


@contextlib.contextmanager
def plain_linears():
    """Inside: megatron's ColumnParallelLinear / RowParallelLinear forward is the two tensor ops
    its forward runs at tensor-parallel size 1 (``matmul(x, weight.t())``, which ``linear``
    without a bias is, then ``+ bias``: the same numbers), without its autograd Function,
    process-group look-ups and per-call checks
    (about 40 us a call on the CPU: 1 ms per generated token for a 4-layer model). Applies only
    with gradients off at TP = 1 (no reduction to skip), else changes nothing. The inference
    engine runs its forwards inside it; training never does."""
    if torch.is_grad_enabled() or parallel_state.get_tensor_model_parallel_world_size() != 1:
        yield
        return
    global _plain_checked
    if not _plain_checked:
        _check_all("megatron.core.tensor_parallel.layers")
        _plain_checked = True
    from megatron.core.tensor_parallel import layers
    saved = layers.ColumnParallelLinear.forward, layers.RowParallelLinear.forward
    layers.ColumnParallelLinear.forward, layers.RowParallelLinear.forward = _column_forward, _row_forward
    try:
        yield
    finally:
        layers.ColumnParallelLinear.forward, layers.RowParallelLinear.forward = saved


# ------------------------------------------------------------------ process groups
def destroy_groups_but_world() -> int:
    """Destroy every process group of this process except the default (world) one: megatron's
    ``destroy_model_parallel`` only drops its references, DeepSpeed keeps its own. -> how many."""
    registry = check(Patched("torch", "torch.distributed.distributed_c10d", "_world.pg_map"))
    world = dist.GroupMember.WORLD
    groups = [g for g in list(registry.pg_map) if g is not world]
    for group in groups:
        dist.destroy_process_group(group)
    return len(groups)
