"""The reading cursor as a decoder input (``model.readback_cursor``; docs/spec.md, "Reading
cursor"): at a read-back text position, the embedding of the grid cell where the next character
is drawn (data/cursor.py computes the cell, from the text written so far and the image) is added
to the token's embedding: a row embedding (the grid's lines, and one more for ``END``: no ink
left) plus a column embedding. Other positions (``NONE`` = -1) get nothing.

Why: in read-back mode the target after text position j is token j + 1, and the image holds
every character of the chunk; without being told where token j + 1 is drawn, the decoder has to
find it from its own reading of the text so far, and in the research harness it never learned to
(greedy read-back 25.8 % against 19.2 % blind); told the place, it read 75.0 % against 16.6 %
(docs/fidelity.md, "A cursor computable while writing").

Guided attention (``train.cursor_attention_weight``; ``cursor_attention_loss``): the decoder must
also learn which visual token holds the cursor's cell, and before it does, attending there teaches
it nothing, so it learns neither (docs/fidelity.md, "Guided attention to the cursor's token"). The
rows carry that token's position (``Vist2Batch.cursor_key``, data/dataset.py) and every head of
the first layers is trained towards it.

Plain ``nn.Embedding`` tables on the first pipeline stage, replicated on tensor-parallel ranks:
they are added to the embedding's output before any sequence-parallel scatter, where every TP rank
holds the same full activations and receives the same full gradient. A training and read-back
aid like the OCR head: not part of the exported model.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from ..config.schema import ModelConfig
from .attention import TokenLayout, vist2_mask_mod

NONE = -1               # the cell id of a position without a cursor (not a read-back text position)


class CursorEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        o, D = cfg.ocr_head, cfg.llm.hidden_size
        self.columns = o.columns
        self.row = nn.Embedding(o.lines + 1, D)          # + END (cell id lines x columns)
        self.column = nn.Embedding(o.columns, D)
        for table in (self.row, self.column):
            nn.init.normal_(table.weight, std=cfg.init_std)

    def forward(self, hidden: torch.Tensor, cursor: torch.Tensor) -> torch.Tensor:
        """hidden [batch, seq, D] + the cursor cells' embeddings where ``cursor`` [batch, seq] >= 0."""
        cell = cursor.clamp(min=0)
        add = self.row(cell // self.columns) + self.column(cell % self.columns)
        return hidden + (add * (cursor != NONE)[..., None]).to(hidden.dtype)


def cursor_attention_loss(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, context: str,
                          keys: torch.Tensor, block: int = 1024) -> Tuple[torch.Tensor, int]:
    """-> (the sum over this rank's heads and every position with ``keys`` >= 0 of -log(the
    attention that position pays to key ``keys[b, s]``), the number of terms). ``q`` [batch, heads,
    seq, head_dim] and ``k`` [batch, kv_heads, seq, head_dim] as the attention computes them
    (normed, rotated; query head i reads KV head i // (heads / kv_heads)); the keys a position may
    attend to are the VIST2 mask's (models/attention.py). Scores of ``block`` positions at a time."""
    mask_mod = vist2_mask_mod(layout, context)
    heads, kv_heads, seq, dim = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    every_key = torch.arange(seq, device=q.device)[None, :]
    total, count = torch.zeros((), dtype=torch.float32, device=q.device), 0
    for b in range(q.shape[0]):
        keys_b = k[b].float().repeat_interleave(heads // kv_heads, 0)          # [heads, seq, dim]
        for part in (keys[b] >= 0).nonzero()[:, 0].split(block):
            scores = q[b, :, part].float() @ keys_b.transpose(-1, -2) / dim ** 0.5   # [heads, n, seq]
            scores = scores.masked_fill(~mask_mod(b, None, part[:, None], every_key), float("-inf"))
            target = scores.gather(-1, keys[b, part][None, :, None].expand(heads, -1, 1))[..., 0]
            total = total + (torch.logsumexp(scores, -1) - target).sum()
            count += heads * len(part)
    return total, count
