"""The OCR head in training (docs/training.md, "Stage 0: teaching the front to read").

Two ways to train it, one head (models/ocr_head.py), one target rule (data/ocr_targets.py):
  - ``train.objective=ocr``, the front-only stage 0: rendered chunks of the training split (every
    chunk, drawn on the fly), ViT -> aligner -> OCR head, cross-entropy against the renderer's
    layout. No LLM forward (on 2 CPU cores the LLM would cost 3-4x the front per image); the LLM's
    weights stay as they are, so the next stage starts from them. One pipeline stage (TP, DP and
    ZeRO 0-3 as in any run);
  - ``train.objective=lm`` with ``model.ocr_head.enabled``: the VIST2 rows as always, plus
    ``train.ocr_weight`` x the head's mean loss per cell over the global batch, handed to the
    pipeline schedule as a first-stage loss (``ocr_first_loss``: the head's loss is left on the
    model by the front's forward, models/vist2.py), so it is back-propagated on the first stage
    with the rest of the step. Every layout, PP included; the paper-scale stage 0
    (examples/8b/stage0_ocr_warmup.yaml: frozen LLM, the aligner also learns what the LLM reads).
Held-out accuracy of the front (``train.ocr_head_eval_chunks``): metrics/front.py.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import Config
from ..data.dataset import parse_blend
from ..data.indexed import open_indexed
from ..data.ocr_targets import OcrChunkDataset, collate_ocr
from ..data.renderer import Renderer
from ..errors import ConfigError
from ..metrics.front import front_readback
from ..metrics.readback import held_out_chunks
from ..models.ocr_head import OcrBatch


def ocr_train_set(cfg: Config, tokenizer) -> OcrChunkDataset:
    """Every chunk of the (single) training dataset, rendered on the fly."""
    blend = parse_blend(cfg.data.train_prefix)
    if len(blend) != 1:
        raise ConfigError(f"train.objective=ocr reads one dataset, not the blend data.train_prefix="
                          f"'{cfg.data.train_prefix}': point it at one prefix for stage 0")
    return OcrChunkDataset(open_indexed(blend[0][1], tokenizer), tokenizer, cfg, cfg.train.seed)


def collate_for(cfg: Config):
    """The collate function of this run's training batches (rows, or stage 0's images)."""
    from ..data.dataset import collate
    return collate_ocr if cfg.train.objective == "ocr" else collate


def ocr_cells(micro_batches: Optional[List]) -> Optional[torch.Tensor]:
    """The global number of OCR-head cells of a step (a collective over the data-parallel group),
    from this rank's micro-batches (first stage); None when they carry no OCR targets."""
    if not micro_batches:
        return None
    targets = [b.ocr_targets if hasattr(b, "ocr_targets") else b.targets for b in micro_batches]
    if any(t is None for t in targets):
        return None
    count = torch.tensor(float(sum(t.numel() for t in targets)), device=targets[0].device)
    dist.all_reduce(count, group=parallel_state.get_data_parallel_group())
    return count


def ocr_first_loss(weight: float, cells: torch.Tensor):
    """The schedule's first-stage loss for one step (parallel/pipeline.py): each micro-batch's OCR
    loss (left on the model by its forward) as its share of ``weight`` x the mean over the step's
    ``cells``, with [summed loss, cells] as statistics."""
    def first_loss(module, batch):
        out = module.take_ocr_loss()
        if out is None:
            return None
        loss, n = out
        return loss * (weight / cells.clamp(min=1.0)), torch.stack([loss.detach().float(), n.float()])
    return first_loss


def ocr_loss_mean(stats: torch.Tensor) -> Optional[float]:
    """Mean OCR-head loss per cell from accumulated [summed loss, cells] (zeroed here; a collective
    over the data-parallel group: the head is on the first stage, as global rank 0 is); None
    without OCR loss."""
    totals = stats.clone()
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    stats.zero_()
    return (totals[0] / totals[1]).item() if totals[1] > 0 else None


class FrontEval:
    """``train.ocr_head_eval_chunks`` fixed held-out chunks read by the OCR head at each evaluation
    (first pipeline stage: every rank there runs the same forwards, so TP ranks cooperate and
    ZeRO-3 gathers as in training)."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.renderer = Renderer.from_model_config(cfg.model)
        valid = open_indexed(parse_blend(cfg.data.valid_prefix)[0][1], tokenizer)
        self.chunks = held_out_chunks(valid, cfg.model.chunk.text_tokens, cfg.train.ocr_head_eval_chunks)

    @staticmethod
    def wanted(cfg: Config) -> bool:
        return bool(cfg.train.ocr_head_eval_chunks and cfg.model.ocr_head.enabled and cfg.model.context == "vist2")

    @torch.no_grad()
    def __call__(self, engine, device) -> Dict:
        engine.eval()
        start = time.time()
        out = front_readback(lambda images: engine(OcrBatch(images)), self.chunks, self.renderer,
                             self.tokenizer, self.cfg.model.ocr_head, device=device)
        engine.train()
        out["seconds"] = time.time() - start
        return out


def front_eval_line(out: Dict) -> str:
    blind = out.get("blind", {}).get("char_accuracy", float("nan"))
    return (f" | front (OCR head) char accuracy {out['char_accuracy']:.1%} (blind {blind:.1%}, "
            f"exact {out['exact_match']:.0%}, {out['chunks']} held-out chunks, loss {out['loss']:.4f})")
