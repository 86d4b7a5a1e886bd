"""Values that pass the type and layout checks but cannot work: non-finite numbers, settings out
of their meaningful range, and sizes no machine holds (validate() calls ``value_problems``; the
trainer's preflight calls ``memory_problem`` once it knows the device)."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import List, Optional

from .schema import Config

# A model beyond this is a typo (a size with extra zeros), not a plan: ~ 100x the largest LLMs.
MAX_PARAMETERS = 10 ** 14


def _floats(obj, path: str = ""):
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            yield from _floats(value, where)
        elif isinstance(value, float):
            yield where, value
        elif isinstance(value, dict):
            yield from ((f"{where}.{k}", v) for k, v in value.items() if isinstance(v, float))


def value_problems(cfg: Config, sizes_valid: bool = True) -> List[str]:
    out = [f"{where} must be a finite number, got {value}" for where, value in _floats(cfg)
           if not math.isfinite(value)]
    if out:
        return out
    o, llm, v = cfg.optim, cfg.model.llm, cfg.model.vision
    for name, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0.0 <= value < 1.0:
            out.append(f"{name} must be in [0, 1), got {value}")
    for name, value in (("optim.eps", o.eps), ("model.llm.rope_theta", llm.rope_theta),
                        ("model.llm.norm_eps", llm.norm_eps), ("model.vision.layernorm_eps", v.layernorm_eps)):
        if value <= 0:
            out.append(f"{name} must be > 0, got {value}")
    if o.weight_decay < 0:
        out.append(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    for name, value in (("model.llm.hidden_dropout", llm.hidden_dropout),
                        ("model.llm.attention_dropout", llm.attention_dropout)):
        if not 0.0 <= value < 1.0:
            out.append(f"{name} must be in [0, 1), got {value}")
    if cfg.train.peak_tflops < 0:
        out.append(f"train.peak_tflops must be >= 0 (0 = by the GPU's name), got {cfg.train.peak_tflops}")
    if sizes_valid:
        from ..models.size import analytic_parameter_counts
        total = analytic_parameter_counts(cfg)["total"]
        if total > MAX_PARAMETERS:
            out.append(f"the model would have {total:.3g} parameters (model.llm / model.vision sizes): "
                       f"far beyond any machine; check the sizes for extra digits")
    return out


def available_memory_bytes(device) -> Optional[int]:
    """Memory one rank can use: the GPU's, or on the CPU the host's shared by its local ranks."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return host // max(1, local)


def memory_problem(cfg: Config, world: int, available: Optional[int]) -> Optional[str]:
    """The planner's per-rank estimate (parallel/planner.py) against ``available`` bytes."""
    if not available:
        return None
    from ..parallel.planner import memory, stage_sizes
    worst = max((sum(memory(cfg, world, r).values()), r["stage"]) for r in stage_sizes(cfg))
    if worst[0] <= available:
        return None
    gib = 2 ** 30
    return (f"this run needs about {worst[0] / gib:,.1f} GiB per rank (pipeline stage {worst[1]}, the "
            f"planner's estimate: tools/dry_run.py shows the parts) but a rank has {available / gib:,.1f} GiB: "
            f"use a smaller model, raise parallel.zero_stage / tensor_parallel / pipeline_parallel, lower "
            f"parallel.micro_batch_size or data.seq_length, or train.activation_checkpointing=full")
