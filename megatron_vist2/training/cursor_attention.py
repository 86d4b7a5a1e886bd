"""Guided attention with the reading cursor in training (``train.cursor_attention_weight``;
models/cursor.py ``cursor_attention_loss``): ``train.cursor_attention_weight`` x the mean, over the
global batch's read-back text positions with a cursor cell and over every head of the first
``train.cursor_attention_layers`` decoder layers, of -log(the attention paid to the visual token
whose region holds the cell). A first-stage loss, like the OCR head's (training/ocr_stage.py): the
model leaves its summed terms on itself in the forward, and the pipeline schedule adds this share
to the first stage's backward. Under tensor parallelism each rank sums its own heads, and the
shares add up to the mean over all heads."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import Config
from ..config.derived import guided_layers


def terms_per_position(cfg: Config) -> int:
    """Guided-attention terms of one guided position: every head of every guided layer (0: off)."""
    return cfg.model.llm.num_heads * guided_layers(cfg)


def cursor_attention_terms(per_position: int, micro_batches: Optional[List]) -> Optional[torch.Tensor]:
    """The global number of guided-attention terms of a step (a collective over the data-parallel
    group): guided positions x ``per_position``; None when the loss is off (``per_position`` 0) or
    the batches carry no cursor keys."""
    if not per_position or not micro_batches:
        return None
    keys = [getattr(b, "cursor_key", None) for b in micro_batches]
    if any(k is None for k in keys):
        return None
    count = sum((k >= 0).sum() for k in keys).float() * per_position
    dist.all_reduce(count, group=parallel_state.get_data_parallel_group())
    return count


def cursor_attention_first_loss(weight: float, terms: torch.Tensor):
    """module -> (this micro-batch's share of ``weight`` x the step's mean, [summed terms, terms])
    or None, from what the model's forward left (``take_cursor_attention_loss``)."""
    def first_loss(module):
        out = module.take_cursor_attention_loss()
        if out is None:
            return None
        total, n = out
        return total * (weight / terms.clamp(min=1.0)), torch.stack([total.detach(), total.new_tensor(float(n))])
    return first_loss


def cursor_attention_mean(stats: torch.Tensor) -> Optional[float]:
    """Mean -log attention on the cursor's token from accumulated [summed terms, terms] (zeroed
    here; summed over the data-parallel and tensor-parallel groups: each TP rank holds its heads);
    None without guided attention."""
    totals = stats.clone()
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(totals, group=parallel_state.get_tensor_model_parallel_group())
    stats.zero_()
    return (totals[0] / totals[1]).item() if totals[1] > 0 else None


def first_stage_loss(ocr, guided):
    """The schedule's first-stage loss of a step from the OCR head's and guided attention's
    (either may be None): their summed losses, with [OCR sum, cells, guided sum, terms]."""
    if ocr is None and guided is None:
        return None

    def first_loss(module, batch):
        parts = [ocr(module, batch) if ocr else None, guided(module) if guided else None]
        if all(p is None for p in parts):
            return None
        loss = sum(p[0] for p in parts if p is not None)
        return loss, torch.cat([p[1].float() if p is not None else torch.zeros(2, device=loss.device) for p in parts])
    return first_loss
