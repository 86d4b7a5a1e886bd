"""Values that pass the type and layout checks but cannot work: non-finite numbers, settings out
of their meaningful range, and sizes no machine holds (validate() calls ``value_problems``; the
memory estimate against the device is parallel/planner.py ``memory_problem``, in the trainer's
preflight)."""
from __future__ import annotations

import dataclasses
import math
from typing import List

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
