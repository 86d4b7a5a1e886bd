"""The cheap subset of the evaluation that runs at each training evaluation (trainer.run_eval),
to TensorBoard and metrics.jsonl: held-out loss split into chunk-first targets (predicted from
the history: the images in VIST2) and within-chunk targets, and the greedy OCR read-back CER
of a few held-out chunks (``train.ocr_cer_chunks``). A chunk-first loss that falls with training
while the within-chunk loss does too shows that the visual path is being used.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from ..config import Config
from ..data.cursor import ReadingCursor
from ..data.dataset import parse_blend
from ..data.indexed import open_indexed
from ..data.renderer import Renderer
from .readback import held_out_chunks, ocr_readback
from .targets import chunk_bins, new_stats, summarize, target_loss_fn


def eval_by_target(schedule, loader, num_micro: int, cfg: Config) -> Dict:
    """One pass over the validation batches with per-target statistics (a collective over every
    rank, like trainer.evaluate) -> metrics/targets.py's summary."""
    schedule.engine.eval()
    bins = chunk_bins(cfg)
    stats = new_stats(bins, schedule.device)
    schedule.evaluate(loader, num_micro, cfg.data.seq_length, target_loss_fn(bins, cfg.model.chunk.text_tokens),
                      stats)
    dist.all_reduce(stats, group=parallel_state.get_data_parallel_group())
    schedule.engine.train()
    return summarize(schedule.share_from_last(stats), bins)


class ReadbackCer:
    """Greedy read-back of ``train.ocr_cer_chunks`` fixed held-out chunks with the training
    module. Every rank runs the same forwards (TP ranks cooperate, ZeRO-3 gathers as in training);
    without pipeline stages only (the read-back loop needs the whole model on each rank)."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        mc = cfg.model
        self.L, self.m = mc.chunk.text_tokens, mc.visual_tokens_per_chunk
        self.renderer = Renderer.from_model_config(mc)
        self.cursor = ReadingCursor.of_model(mc)
        self.chunks = held_out_chunks(open_indexed(parse_blend(cfg.data.valid_prefix)[0][1], tokenizer),
                                      self.L, cfg.train.ocr_cer_chunks)

    @staticmethod
    def wanted(cfg: Config) -> Optional[str]:
        """None when the probe runs, else why it does not."""
        if not cfg.train.ocr_cer_chunks:
            return "off"
        if cfg.parallel.pipeline_parallel > 1:
            return "train.ocr_cer_chunks needs the whole model on each rank (no pipeline stages): skipped"
        return None

    @torch.no_grad()
    def read(self, engine, device, blind: bool = False) -> Dict:
        """metrics/readback.py's ``ocr_readback`` summary of the held-out chunks (with
        ``blind``: also read from each other's images, the language prior's score)."""
        engine.eval()

        def forward(batch):
            return tensor_parallel.gather_from_tensor_model_parallel_region(engine(batch))
        out = ocr_readback(forward, self.chunks, self.renderer, self.tokenizer, self.L, self.m, device=device,
                           blind=blind, cursor=self.cursor)
        engine.train()
        return out
