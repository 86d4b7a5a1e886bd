"""Beyond the training length: next-token loss on held-out documents longer than a training
row, scored through the inference engine with its running compression (each finished chunk is
rendered, encoded and its text K/V evicted, as in generation). The engine's logits equal the
teacher-forced training forward under the VIST2 mask (inference/engine.py), so this is the
loss a model trained on short rows gets on a history longer than any it saw.

Targets: every token after the first of the document. Reported overall, for targets past the
text a training row holds, and by chunk index (chunk-first targets separately).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import numpy as np
import torch

from ..config import Config
from ..data.packing import max_chunks_per_segment


def row_text_tokens(cfg: Config) -> int:
    """Text tokens of the longest history a training row holds (one segment)."""
    m = cfg.model
    return max_chunks_per_segment(cfg.data.seq_length, m.chunk.text_tokens, m.visual_tokens_per_chunk,
                                  False) * m.chunk.text_tokens


def long_documents(indexed, min_tokens: int, count: int, max_tokens: int) -> List[np.ndarray]:
    """Up to ``count`` held-out documents longer than ``min_tokens``, cut to ``max_tokens``."""
    docs = [d for d in range(len(indexed)) if int(indexed.lengths[d]) > min_tokens][:count]
    return [np.asarray(indexed.tokens(d, 0, min(max_tokens, int(indexed.lengths[d]))), np.int64) for d in docs]


@torch.no_grad()
def token_nll(engine, ids: List[int]) -> np.ndarray:
    """-> the negative log-likelihood of ids[1:], each predicted by the engine from ids[:t]."""
    logits = engine.prefill([ids[:1]])
    out = []
    for t in range(1, len(ids)):
        out.append(float(-torch.log_softmax(logits[0].float(), -1)[ids[t]]))
        if t + 1 < len(ids):
            logits = engine.step(torch.tensor([ids[t]]))
    return np.asarray(out)


def long_context_loss(engine_for: Callable[[int], object], docs: List[np.ndarray], cfg: Config) -> Dict:
    """Loss on ``docs`` through ``engine_for(max_context)`` (batch 1)."""
    L = cfg.model.chunk.text_tokens
    limit = row_text_tokens(cfg)
    if not docs:
        return {"documents": 0, "note": f"no held-out document is longer than a training row ({limit} text tokens)"}
    engine = engine_for(max(len(d) for d in docs) + 1)
    nll, chunk, first = [], [], []
    for doc in docs:
        values = token_nll(engine, doc.tolist())
        t = np.arange(1, len(doc))
        nll.append(values), chunk.append(t // L), first.append(t % L == 0)
    nll, chunk, first = np.concatenate(nll), np.concatenate(chunk), np.concatenate(first)
    beyond = chunk * L >= limit

    def mean(sel):
        return float(nll[sel].mean()) if sel.any() else None
    loss = mean(np.ones_like(first))
    return {"documents": len(docs), "targets": int(len(nll)), "training_row_text_tokens": limit,
            "loss": loss, "perplexity": math.exp(loss), "loss_within_training_length": mean(~beyond),
            "loss_beyond_training_length": mean(beyond),
            "by_chunk": [{"chunk": int(c), "loss_within": mean((chunk == c) & ~first),
                          "loss_first": mean((chunk == c) & first)} for c in np.unique(chunk)]}
