"""The Qwen3-style decoder: RMSNorm, GQA attention with QK-norm and RoPE, SwiGLU MLP, no biases."""
from __future__ import annotations

import torch
import torch.nn as nn
from megatron.core import ModelParallelConfig, tensor_parallel

from ..config.schema import LLMConfig
from .transformer import MLP, Block, SelfAttention, normal_init, scaled_std


def decoder_layer(llm: LLMConfig, mp: ModelParallelConfig, std: float) -> Block:
    out_std = scaled_std(std, llm.num_layers)
    return Block(
        SelfAttention(llm.hidden_size, llm.num_heads, llm.num_kv_heads, llm.head_dim, mp, std,
                      out_std, bias=False, qk_norm_eps=llm.norm_eps if llm.qk_norm else None, dropout=llm.attention_dropout),
        MLP(llm.hidden_size, llm.ffn_hidden_size, mp, std, out_std, gated=True, bias=False),
        lambda: nn.RMSNorm(llm.hidden_size, eps=llm.norm_eps),
        hidden_dropout=llm.hidden_dropout, sequence_parallel=mp.sequence_parallel)


class LMHead(nn.Module):
    """Final RMSNorm + vocab-parallel output layer (logits stay split over tensor-parallel ranks).
    With tied embeddings the output layer owns no weight: forward takes the embedding's."""

    def __init__(self, llm: LLMConfig, vocab_padded: int, mp: ModelParallelConfig, std: float):
        super().__init__()
        self.norm = nn.RMSNorm(llm.hidden_size, eps=llm.norm_eps)
        self.output = tensor_parallel.ColumnParallelLinear(
            llm.hidden_size, vocab_padded, config=mp, init_method=normal_init(std), bias=False,
            gather_output=False, skip_weight_param_allocation=llm.tie_embeddings)

    def forward(self, hidden: torch.Tensor, tied_weight=None) -> torch.Tensor:
        return self.output(self.norm(hidden), weight=tied_weight)[0]
