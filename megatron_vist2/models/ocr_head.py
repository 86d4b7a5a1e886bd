"""The OCR head: an auxiliary reader of one image's visual tokens (the aligner's output), used by
stage 0 to teach the front to read (docs/training.md, "Stage 0"); not part of the exported model.

Design (measured in ../shared/notes/reading-research.md: the same front under the LLM's
next-token loss stays at its blind score; under CTC too; with this head it reads):
  - the m visual tokens [n, m, D] -> linear to the head width + a learned position per token ->
    one bidirectional self-attention block over them;
  - ``num_queries`` learned queries, each ``num_layers`` blocks of [cross-attention to the
    tokens + MLP] (no attention between queries: each query reads its own part of the page);
    queries and token positions start at ``init_std`` like every other embedding (a unit-scale
    start with the query embedding re-added in every block, as DETR's object queries, was
    measured slower: 61-66 % against 82-84 % held-out after 3,000 steps, docs/fidelity.md);
  - each query expands into ``slots_per_query`` cells (linear, GELU, LayerNorm) and every cell is
    classified into ``num_classes`` (empty, unknown, the charset): logits [n, cells, classes].
The targets are the renderer's layout (data/ocr_targets.py); the loss is cross-entropy summed
over every cell (empty ones too: where the text ends is part of reading it).

Plain PyTorch modules, replicated on tensor-parallel ranks (their input, the aligner's gathered
output, is the same on every TP rank, so their gradients are too); DeepSpeed reduces them over
the data-parallel group and ZeRO partitions them like any parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import ModelConfig


@dataclass
class OcrBatch:
    """A micro-batch of stage 0 (``train.objective=ocr``): rendered chunks and their grid targets."""
    images: torch.Tensor                      # uint8 [n, H, W]
    targets: Optional[torch.Tensor] = None    # int64 [n, lines * columns] class ids (data/ocr_targets.py)

    def to(self, device) -> "OcrBatch":
        return OcrBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                           for f in fields(self)})


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x [n, q, D] attends to memory [n, k, D] (no mask)."""
        def split(t):
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(memory)), split(self.v(memory)))
        return self.out(y.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    """Pre-LayerNorm [attention (``cross``: to a normalised ``memory``, else to itself) + MLP],
    residual."""

    def __init__(self, width: int, heads: int, cross: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.norm_memory = nn.LayerNorm(width) if cross else None
        self.attention = _Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, memory: torch.Tensor = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h if memory is None else self.norm_memory(memory))
        return x + self.mlp(self.norm2(x))


class OcrGridHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        o = cfg.ocr_head
        self.cells, self.slots, self.slot_size = o.cells, o.slots_per_query, o.slot_size
        self.input = nn.Linear(cfg.llm.hidden_size, o.hidden_size)
        self.token_position = nn.Parameter(torch.randn(cfg.visual_tokens_per_chunk, o.hidden_size) * cfg.init_std)
        self.encoder = _Block(o.hidden_size, o.num_heads, cross=False)
        self.queries = nn.Parameter(torch.randn(o.num_queries, o.hidden_size) * cfg.init_std)
        self.readers = nn.ModuleList(_Block(o.hidden_size, o.num_heads, cross=True) for _ in range(o.num_layers))
        self.expand = nn.Linear(o.hidden_size, o.slots_per_query * o.slot_size)
        self.cell_norm = nn.LayerNorm(o.slot_size)
        self.classify = nn.Linear(o.slot_size, o.num_classes)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens [n, m, D] -> cell logits [n, lines * columns, classes] (fp32)."""
        memory = self.input(visual.to(self.input.weight.dtype)) + self.token_position
        memory = self.encoder(memory)
        x = self.queries.expand(visual.shape[0], -1, -1)
        for reader in self.readers:
            x = reader(x, memory)
        cells = F.gelu(self.expand(x)).unflatten(-1, (self.slots, self.slot_size)).flatten(1, 2)
        return self.classify(self.cell_norm(cells[:, :self.cells])).float()


def ocr_loss(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (cross-entropy summed over every cell, the number of cells)."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten().to(logits.device), reduction="sum")
    return loss, torch.tensor(float(targets.numel()), device=logits.device)
