"""Modal aligner: merge k x k neighbouring patches (concatenate their features), then
tanh(x W + b) into the LLM width. m = (H / (p k)) (W / (p k)) visual tokens per chunk."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
from megatron.core import ModelParallelConfig

from .transformer import column


class Aligner(nn.Module):
    def __init__(self, vision_hidden: int, llm_hidden: int, merge: int, grid: Tuple[int, int],
                 mp: ModelParallelConfig, std: float):
        super().__init__()
        self.merge, self.grid = merge, grid
        self.proj = column(vision_hidden * merge * merge, llm_hidden, mp, std, bias=True,
                           gather_output=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [gh * gw, n, d_v] (row-major grid) -> visual tokens [n, m, llm_hidden]."""
        k, (gh, gw) = self.merge, self.grid
        n, d = patches.shape[1], patches.shape[2]
        x = patches.permute(1, 0, 2).reshape(n, gh // k, k, gw // k, k, d)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(n, (gh // k) * (gw // k), k * k * d)
        return torch.tanh(self.proj(x)[0])
