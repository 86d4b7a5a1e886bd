"""Values that pass the type and layout checks but cannot work: non-finite numbers, settings out
of their meaningful range, and sizes no machine holds (validate() calls ``value_problems``; the
memory estimate against the device is cost/planner.py ``memory_problem``, in the trainer's
preflight)."""
from __future__ import annotations

import dataclasses
import math
from typing import List

from .derived import analytic_parameter_counts
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


def control_problems(cfg: Config) -> List[str]:
    """A control (``model.context`` text or window) has no images: read-back chunks, the OCR
    probe and the vision parts are settings of the VIST2 model only (docs/spec.md, "Controls")."""
    ctx, d, t = cfg.model.context, cfg.data, cfg.train
    if ctx == "vist2":
        return []
    why = f"model.context '{ctx}' is a control without images"
    out = []
    if d.readback_fraction or any(share for _, share in d.readback_schedule if isinstance(share, (int, float))):
        out.append(f"data.readback_fraction / data.readback_schedule: {why}, so no chunk can be in "
                   f"read-back mode; set them to 0 / [] (train the controls on the stage-1 data "
                   f"without read-back) or use model.context=vist2")
    if t.ocr_cer_chunks:
        out.append(f"train.ocr_cer_chunks: {why} (it reads text off images); set it to 0")
    if t.ocr_probe_batches:
        out.append(f"train.ocr_probe_batches: {why} (the probe reads text off images); set it to 0")
    vision = [p for p in t.freeze + list(cfg.optim.lr_multipliers)
              if p.split(".")[:2] in (["front", "vision"], ["front", "aligner"])]
    if vision:
        out.append(f"train.freeze / optim.lr_multipliers name {vision}: {why} and has no "
                   f"front.vision or front.aligner; remove them")
    return out


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
    out += control_problems(cfg)
    if cfg.train.peak_tflops < 0:
        out.append(f"train.peak_tflops must be >= 0 (0 = by the GPU's name), got {cfg.train.peak_tflops}")
    if sizes_valid:
        total = analytic_parameter_counts(cfg)["total"]
        if total > MAX_PARAMETERS:
            out.append(f"the model would have {total:.3g} parameters (model.llm / model.vision sizes): "
                       f"far beyond any machine; check the sizes for extra digits")
    return out
