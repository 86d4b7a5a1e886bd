"""The VIST2 objective: next-token loss on text targets, its split by chunk mode, and the OCR
read-back probe's statistics. The pipeline schedule calls these as the loss function it is
handed (last stage only) and adds the statistics they return into the accumulator it is given.

Only text tokens are ever targets (``labels``/``loss_mask`` come from the packer): a text token
predicts the next token of its chunk, and the first token of chunk i is predicted by the last
visual token of V_{i-1} (or of V_i in read-back mode), i.e. from the images alone.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from ..models.vist2 import Vist2Batch


def masked_token_losses(logits: torch.Tensor, batch: Vist2Batch) -> torch.Tensor:
    """Next-token cross-entropy per position [seq, batch], 0 outside the loss mask."""
    # megatron's kernel overwrites its input (max-subtract, exp): never hand it the caller's tensor
    work = logits.clone() if logits.dtype == torch.float32 else logits.float()
    per_token = tensor_parallel.vocab_parallel_cross_entropy(work, batch.labels.t().contiguous())
    return per_token * batch.loss_mask.t().to(per_token.dtype)


def token_losses(logits: torch.Tensor, batch: Vist2Batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over the loss mask, and the number of masked tokens."""
    return masked_token_losses(logits, batch).sum(), batch.loss_mask.sum()


def training_loss(logits: torch.Tensor, batch: Vist2Batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (summed loss, [loss sum and target count of read-back chunks, the same of history
    chunks]) (``SPLIT_STATS`` values)."""
    per_token = masked_token_losses(logits, batch)
    readback = batch.layout.readback.t()
    targets = batch.loss_mask.t() > 0
    # products, not boolean-mask indexing: indexing sizes its output from the mask, a
    # device-to-host sync on every micro-batch
    split = torch.stack([(per_token * readback).sum(), (targets & readback).sum(),
                         (per_token * ~readback).sum(), (targets & ~readback).sum()]).detach().float()
    return per_token.sum(), split


SPLIT_STATS = 4


def readback_probe_loss(logits: torch.Tensor, batch: Vist2Batch
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Evaluation: -> (summed loss, [greedy predictions that are the text, targets] in read-back
    chunks, None without read-back targets) (``PROBE_STATS`` values): does the model read chunk
    i's text off V_i?"""
    per_token = masked_token_losses(logits, batch)
    readback = batch.layout.readback.t()
    targets = batch.loss_mask.t() > 0
    hits = None
    if (targets & readback).any():
        # (TP ranks hold the same batch, so they agree on taking this collective)
        predicted = tensor_parallel.gather_from_tensor_model_parallel_region(logits).argmax(-1)
        hit = (predicted == batch.labels.t()) & targets & readback
        hits = torch.stack([hit.sum(), (targets & readback).sum()]).float()
    return per_token.sum(), hits


PROBE_STATS = 2


def split_means(split: torch.Tensor, schedule) -> Tuple[float, float]:
    """Mean training loss on read-back chunks and on history chunks from ``split`` (accumulated
    ``training_loss`` statistics; zeroed here), nan where there were none; a collective: every
    rank calls it at the same step."""
    totals = split.clone()
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    totals = schedule.share_from_last(totals)
    split.zero_()

    def mean(total, count):
        return (total / count).item() if count > 0 else float("nan")
    return mean(totals[0], totals[1]), mean(totals[2], totals[3])
