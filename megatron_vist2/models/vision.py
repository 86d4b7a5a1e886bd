"""The vision encoder: a SigLIP-shaped ViT (conv patch embedding, learned positions,
pre-LayerNorm blocks with GELU-tanh MLP, a final LayerNorm). Bidirectional over the patches."""
from __future__ import annotations

import torch
import torch.nn as nn
from megatron.core import ModelParallelConfig

from ..config.schema import ModelConfig
from .transformer import MLP, Block, SelfAttention


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig):
        super().__init__()
        v, std = cfg.vision, cfg.init_std
        self.num_channels = v.num_channels
        self.grid = (cfg.chunk.image_height // v.patch_size, cfg.chunk.image_width // v.patch_size)
        self.patch_embed = nn.Conv2d(v.num_channels, v.hidden_size, v.patch_size, stride=v.patch_size)
        self.position_embed = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], v.hidden_size) * std)
        head_dim = v.hidden_size // v.num_heads

        def norm():
            return nn.LayerNorm(v.hidden_size, eps=v.layernorm_eps)

        self.layers = nn.ModuleList(
            Block(SelfAttention(v.hidden_size, v.num_heads, v.num_heads, head_dim, mp, std, std,
                                bias=True, qk_norm_eps=None),
                  MLP(v.hidden_size, v.ffn_hidden_size, mp, std, std, gated=False, bias=True), norm)
            for _ in range(v.num_layers))
        self.post_norm = norm()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [n, H, W] (grayscale renders) -> patch features [patches, n, hidden]."""
        x = images.to(self.patch_embed.weight.dtype) / 127.5 - 1.0     # [0, 255] -> [-1, 1]
        x = x[:, None].expand(-1, self.num_channels, -1, -1)
        x = self.patch_embed(x).flatten(2).permute(2, 0, 1)             # [patches, n, hidden]
        x = x + self.position_embed[:, None, :]
        for layer in self.layers:
            x = layer(x)                                                  # no mask: bidirectional
        return self.post_norm(x)
