"""Transformer pieces shared by the ViT and the Qwen3-style decoder.

Hidden states are [seq, batch, hidden] (megatron-core's layout, which sequence parallelism and
its vocab-parallel cross-entropy expect). Every matrix is a megatron-core ``tensor_parallel``
layer: column-parallel into the heads / FFN, row-parallel back out. Q, K, V and gate/up are
separate matrices so tensor-parallel slicing and the Hugging Face name mapping stay one-to-one.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from .attention import attend


def normal_init(std: float) -> Callable:
    return lambda w: nn.init.normal_(w, mean=0.0, std=std)


def column(in_f: int, out_f: int, mp: ModelParallelConfig, std: float, bias: bool,
           gather_output: bool = False) -> tensor_parallel.ColumnParallelLinear:
    return tensor_parallel.ColumnParallelLinear(in_f, out_f, config=mp, init_method=normal_init(std),
                                                bias=bias, gather_output=gather_output)


def row(in_f: int, out_f: int, mp: ModelParallelConfig, std: float, bias: bool
        ) -> tensor_parallel.RowParallelLinear:
    return tensor_parallel.RowParallelLinear(in_f, out_f, config=mp, init_method=normal_init(std),
                                             bias=bias, input_is_parallel=True, skip_bias_add=False)


def tp_size(mp: ModelParallelConfig) -> int:
    return mp.tensor_model_parallel_size


# ---------------------------------------------------------------- rotary position embedding
class Rotary(nn.Module):
    """RoPE from explicit position ids (VIST2 uses compressed positions, not 0..S-1)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, position: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """position [batch, seq] -> cos, sin [seq, batch, 1, head_dim] (fp32)."""
        freqs = position.t().float()[..., None] * self.inv_freq.to(position.device)
        emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate-half convention, as Hugging Face Qwen3/Llama (so exported weights match)."""
    cos, sin = rope
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# ---------------------------------------------------------------- attention and MLP
class ReplicatedKVProjection(nn.Module):
    """K or V projection when there are more tensor-parallel ranks than KV heads (tp > kv heads):
    every rank keeps the full weight (as at TP = 1) and computes only the KV head its query heads
    use. Its gradient touches that head's rows only; the parts are summed over the TP group
    (``tp_partial_grad``), so the replicas stay equal. The input's gradient is summed over TP
    as for a column-parallel layer."""

    def __init__(self, hidden: int, num_kv_heads: int, head_dim: int, mp: ModelParallelConfig, std: float):
        super().__init__()
        from megatron.core import parallel_state
        tp = tp_size(mp)
        self.sequence_parallel = mp.sequence_parallel
        self.weight = nn.Parameter(torch.empty(num_kv_heads * head_dim, hidden))
        normal_init(std)(self.weight.data)       # the same draw as the TP=1 column-parallel layer
        self.weight.tp_partial_grad = True
        head = parallel_state.get_tensor_model_parallel_rank() * num_kv_heads // tp
        self.rows = slice(head * head_dim, (head + 1) * head_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, None]:
        if self.sequence_parallel:
            x = tensor_parallel.gather_from_sequence_parallel_region(x)
        else:
            x = tensor_parallel.copy_to_tensor_model_parallel_region(x)
        return F.linear(x, self.weight[self.rows]), None


class SelfAttention(nn.Module):
    """Multi-head / grouped-query self-attention; optional QK-norm and RoPE."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 mp: ModelParallelConfig, std: float, out_std: float, bias: bool,
                 qk_norm_eps: Optional[float], dropout: float = 0.0):
        super().__init__()
        tp = tp_size(mp)
        self.dropout = dropout
        self.heads, self.head_dim = num_heads // tp, head_dim
        self.q_proj = column(hidden, num_heads * head_dim, mp, std, bias)
        if tp > num_kv_heads:                    # each rank needs one KV head, shared with others
            if bias:
                raise ValueError("replicated KV heads (tensor_parallel > num_kv_heads) support no bias")
            self.kv_heads = 1
            self.k_proj = ReplicatedKVProjection(hidden, num_kv_heads, head_dim, mp, std)
            self.v_proj = ReplicatedKVProjection(hidden, num_kv_heads, head_dim, mp, std)
        else:
            self.kv_heads = num_kv_heads // tp
            self.k_proj = column(hidden, num_kv_heads * head_dim, mp, std, bias)
            self.v_proj = column(hidden, num_kv_heads * head_dim, mp, std, bias)
        self.o_proj = row(num_heads * head_dim, hidden, mp, out_std, bias)
        if qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
            # Replicated on every tensor-parallel rank, but each rank normalises only its own
            # heads: its gradient is a partial sum (parallel/grad_sync.py adds the parts).
            self.q_norm.weight.tp_partial_grad = True
            self.k_norm.weight.tp_partial_grad = True
        else:
            self.q_norm = self.k_norm = None

    def project(self, x: torch.Tensor, rope) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [seq, batch, hidden] -> q, k, v [batch, heads, seq, head_dim] (normed, rotated)."""
        q, k, v = self.q_proj(x)[0], self.k_proj(x)[0], self.v_proj(x)[0]
        s, b = q.shape[:2]          # the full sequence: with sequence parallelism x is a slice of it
        q = q.view(s, b, self.heads, self.head_dim)
        k = k.view(s, b, self.kv_heads, self.head_dim)
        v = v.view(s, b, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        return q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)

    def output(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx [batch, heads, seq, head_dim] -> [seq, batch, hidden]."""
        b, h, s, d = ctx.shape
        return self.o_proj(ctx.permute(2, 0, 1, 3).reshape(s, b, h * d))[0]

    def forward(self, x: torch.Tensor, rope, mask, cache=None, queries: Optional[slice] = None) -> torch.Tensor:
        """``cache`` (inference): an object whose ``store(k, v)`` keeps the new keys/values and
        returns every key/value the queries may attend to (``mask`` is then over those).
        ``queries`` (inference): keys and values from every position, outputs for these only."""
        q, k, v = self.project(x, rope)
        if cache is not None:
            k, v = cache.store(k, v)
        if queries is not None:
            q = q[:, :, queries]
        if self.dropout and self.training:
            # This rank's heads: a stream of its own (megatron's model-parallel RNG), so the
            # heads on different tensor-parallel ranks get independent masks.
            with get_cuda_rng_tracker().fork():
                return self.output(attend(q, k, v, mask, self.dropout))
        return self.output(attend(q, k, v, mask))


class MLP(nn.Module):
    """SwiGLU (gated=True: down(silu(gate x) * up x)) or GELU-tanh (ViT: fc2(gelu(fc1 x)))."""

    def __init__(self, hidden: int, ffn: int, mp: ModelParallelConfig, std: float, out_std: float,
                 gated: bool, bias: bool):
        super().__init__()
        self.gated = gated
        if gated:
            self.gate_proj = column(hidden, ffn, mp, std, bias)
        self.up_proj = column(hidden, ffn, mp, std, bias)
        self.down_proj = row(ffn, hidden, mp, out_std, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)[0]
        if self.gated:
            act = F.silu(self.gate_proj(x)[0]) * up
        else:
            act = F.gelu(up, approximate="tanh")
        return self.down_proj(act)[0]


class Block(nn.Module):
    """Pre-norm residual block: x + drop(attn(norm(x))); x + drop(mlp(norm(x)))."""

    def __init__(self, attention: SelfAttention, mlp: MLP, norm: Callable[[], nn.Module],
                 hidden_dropout: float = 0.0, sequence_parallel: bool = False):
        super().__init__()
        self.input_norm = norm()
        self.attention = attention
        self.post_attention_norm = norm()
        self.mlp = mlp
        self.hidden_dropout, self.sequence_parallel = hidden_dropout, sequence_parallel

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.hidden_dropout and self.training):
            return x
        if self.sequence_parallel:        # each TP rank holds other tokens: independent masks
            with get_cuda_rng_tracker().fork():
                return F.dropout(x, self.hidden_dropout)
        return F.dropout(x, self.hidden_dropout)   # replicated over TP: the same (default) stream

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache=None,
                queries: Optional[slice] = None) -> torch.Tensor:
        """``queries`` (inference): the output of these positions only (a last layer whose other
        outputs nothing reads); every position still yields its keys and values."""
        h = self.attention(self.input_norm(x), rope, mask, cache, queries)
        x = x + self._drop(h) if queries is None else x[queries] + self._drop(h)
        return x + self._drop(self.mlp(self.post_attention_norm(x)))


def scaled_std(std: float, num_layers: int) -> float:
    """Output projections start smaller so the residual stream does not grow with depth."""
    return std / math.sqrt(2.0 * num_layers)
