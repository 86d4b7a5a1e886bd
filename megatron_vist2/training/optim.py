"""AdamW with decoupled weight decay (none on norms, biases and embeddings' 1-D peers), per-module
learning-rate multipliers, and a linear warm-up + cosine decay schedule. DeepSpeed owns stepping
and clipping."""
from __future__ import annotations

import math

import torch

from ..config.schema import OptimConfig
from ..config.derived import name_under


def lr_multiplier(name: str, multipliers) -> float:
    """The multiplier of the longest prefix of ``name`` in ``multipliers`` (1.0 if none)."""
    best, mult = -1, 1.0
    for prefix, value in multipliers.items():
        if name_under(name, prefix) and len(prefix) > best:
            best, mult = len(prefix), value
    return mult


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Groups by (weight decay, lr multiplier); frozen parameters are left out. The scheduler
    scales every group's lr by the same factor, so multipliers hold through warm-up and decay."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (cfg.weight_decay if p.dim() >= 2 else 0.0, lr_multiplier(name, cfg.lr_multipliers))
            groups.setdefault(key, []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, -kv[0][0]))   # lr x 1 first
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": cfg.lr * mult}
                              for (wd, mult), ps in ordered],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(cfg: OptimConfig, total_steps: int):
    """A callable DeepSpeed turns into the run's scheduler (LambdaLR scales the base lr)."""
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)
