"""The DeepSpeed JSON config, derived from our Config (never written by hand)."""
from __future__ import annotations

import torch

from ..config.schema import Config
from ..config.derived import grad_accum_bytes, gradient_accumulation_steps


def resolve_dtype(cfg: Config) -> torch.dtype:
    if cfg.train.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.train.dtype]


def grad_accum_dtype(cfg: Config) -> torch.dtype:
    """The dtype DeepSpeed accumulates micro-batch gradients in (config/derived.py
    ``grad_accum_bytes``): fp32 under ZeRO 1-3, as Megatron does (bf16 sums over the 64-128
    micro-batches of a large global batch lose the small contributions). bf16 at ZeRO-1 then runs
    DeepSpeed's BF16_Optimizer (an fp32 gradient buffer of the whole stage, all-reduced in fp32
    once per step); ZeRO-2/3 reduce bf16 gradients into their fp32 partition. bf16 without ZeRO
    stays bf16 (DeepSpeed raises NotImplementedError for fp32 accumulation there), which is why
    the bf16 presets use ZeRO >= 1."""
    dtype = resolve_dtype(cfg)
    return torch.float32 if grad_accum_bytes(cfg, dtype.itemsize) == 4 else dtype


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    p = cfg.parallel
    accumulate = {torch.float32: "fp32", torch.bfloat16: "bf16"}[grad_accum_dtype(cfg)]
    return {
        "train_micro_batch_size_per_gpu": p.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "train_batch_size": p.global_batch_size,
        # DeepSpeed clips at 1.0 when the key is absent: always state it.
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": resolve_dtype(cfg) == torch.bfloat16},
        "data_types": {"grad_accum_dtype": accumulate},
        "zero_allow_untested_optimizer": True,     # torch AdamW: no JIT-built fused optimizer
        "steps_per_print": 2 ** 31 - 1,            # our own logging reports progress
        "wall_clock_breakdown": False,
        # Pipeline stages save under their own tag (checkpoint/save.py): not a mistake.
        "checkpoint": {"tag_validation": "Ignore" if p.pipeline_parallel > 1 else "Warn"},
    }
