"""The VIST2 objective: next-token loss on text targets, its losses by chunk mode, and the OCR
read-back probe's statistics. The pipeline schedule calls these as the loss function it is
handed (last stage only) and adds the statistics they return into the accumulator it is given.

Only text tokens are ever targets (``labels``/``loss_mask`` come from the packer): a text token
predicts the next token of its chunk, and the first token of chunk i is predicted by the last
visual token of V_{i-1} (or by its read-back marker in read-back mode), i.e. from the images alone.

Target weights (``train.image_target_weight``, ``train.readback_target_weight``): the training
objective may count some targets more than others. ``TargetWeights`` derives each position's
weight from the per-token layout alone (so every pipeline stage computes the same weights from
the metadata that travels with the activations); the step's loss is then the weighted mean
sum(w ce) / sum(w) over the global batch (the trainer all-reduces sum(w) as its target count).
Why: in a read-back chunk only its first target is predicted from the image alone; the other
31 of 32 are teacher-forced continuations the language prior already predicts, so the image's
share of the gradient is small unless those image-only targets weigh more (docs/fidelity.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from ..data.packing import readback_markers, readback_predictors
from ..models.attention import VISUAL
from ..models.ocr_head import OcrBatch, ocr_loss
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


@dataclass(frozen=True)
class TargetWeights:
    """How much each kind of target counts in the training objective (1, 1: the plain mean)."""
    image: float = 1.0        # targets predicted from images alone (a chunk's first token)
    readback: float = 1.0     # every target of a read-back chunk (its first one: both factors)
    m: int = 0                # visual tokens per chunk (finds the read-back markers)

    @staticmethod
    def from_config(cfg) -> "TargetWeights":
        return TargetWeights(cfg.train.image_target_weight, cfg.train.readback_target_weight,
                             cfg.model.visual_tokens_per_chunk)

    @property
    def plain(self) -> bool:
        return self.image == 1.0 and self.readback == 1.0

    def factors(self, batch: Vist2Batch) -> torch.Tensor:
        """Per-position factor [batch, seq] of the target a position predicts (1: none applies).
        Image-only targets: those of the last visual token of a block and of a read-back marker
        (data/packing.py)."""
        if self.image != 1.0 and self.m <= 0:
            raise ValueError("TargetWeights with an image weight needs m, the visual tokens per chunk "
                             "(TargetWeights.from_config)")
        lay = batch.layout
        f = torch.ones(batch.loss_mask.shape, device=batch.loss_mask.device)
        f = torch.where(readback_predictors(lay.kind, lay.readback), f * self.readback, f)
        from_images = (lay.kind == VISUAL) | readback_markers(lay.kind, lay.readback, lay.chunk, lay.position, self.m)
        return torch.where(from_images, f * self.image, f)

    def of(self, batch: Vist2Batch) -> torch.Tensor:
        """Per-position weight [batch, seq]: ``loss_mask`` times its target's factor."""
        return batch.loss_mask.float() * self.factors(batch)


def training_loss(logits: torch.Tensor, batch: Vist2Batch, weights: TargetWeights = TargetWeights()
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (summed weighted loss, [loss sum and target count of read-back chunks, the same of
    history chunks], unweighted) (``MODE_STATS`` values). Divide by ``weights.of(batch).sum()``
    (summed over the global batch) for the objective's mean."""
    per_token = masked_token_losses(logits, batch)
    readback = readback_predictors(batch.layout.kind, batch.layout.readback).t()
    targets = batch.loss_mask.t() > 0
    # products, not boolean-mask indexing: indexing sizes its output from the mask, a
    # device-to-host sync on every micro-batch
    by_mode = torch.stack([(per_token * readback).sum(), (targets & readback).sum(),
                           (per_token * ~readback).sum(), (targets & ~readback).sum()]).detach().float()
    if weights.plain:
        return per_token.sum(), by_mode
    return (per_token * weights.factors(batch).t().to(per_token.dtype)).sum(), by_mode


MODE_STATS = 4


def ocr_head_loss(logits: torch.Tensor, batch: OcrBatch) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stage 0 (``train.objective=ocr``): the OCR head's cell logits -> (cross-entropy summed over
    the cells, [that sum, the number of cells]) (models/ocr_head.py)."""
    total, cells = ocr_loss(logits, batch.targets)
    return total, torch.stack([total.detach().float(), cells])


def readback_probe_loss(logits: torch.Tensor, batch: Vist2Batch
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Evaluation: -> (summed loss, [greedy predictions that are the text, targets] in read-back
    chunks, None without read-back targets) (``PROBE_STATS`` values): does the model read chunk
    i's text off V_i?"""
    per_token = masked_token_losses(logits, batch)
    readback = readback_predictors(batch.layout.kind, batch.layout.readback).t()
    targets = batch.loss_mask.t() > 0
    hits = None
    if (targets & readback).any():
        # (TP ranks hold the same batch, so they agree on taking this collective)
        predicted = tensor_parallel.gather_from_tensor_model_parallel_region(logits).argmax(-1)
        hit = (predicted == batch.labels.t()) & targets & readback
        hits = torch.stack([hit.sum(), (targets & readback).sum()]).float()
    return per_token.sum(), hits


PROBE_STATS = 2


def mode_means(by_mode: torch.Tensor, schedule) -> Tuple[float, float]:
    """Mean training loss on read-back chunks and on history chunks from ``by_mode`` (accumulated
    ``training_loss`` statistics; zeroed here), nan where there were none; a collective: every
    rank calls it at the same step."""
    totals = by_mode.clone()
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    totals = schedule.share_from_last(totals)
    by_mode.zero_()

    def mean(total, count):
        return (total / count).item() if count > 0 else float("nan")
    return mean(totals[0], totals[1]), mean(totals[2], totals[3])
