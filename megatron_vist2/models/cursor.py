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

Plain ``nn.Embedding`` tables on the first pipeline stage, replicated on tensor-parallel ranks:
they are added to the embedding's output before any sequence-parallel scatter, where every TP rank
holds the same full activations and receives the same full gradient. A training and read-back
aid like the OCR head: not part of the exported model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config.schema import ModelConfig

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
