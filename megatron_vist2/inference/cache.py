"""Preallocated KV cache and its slot arithmetic: where each new key goes, at which RoPE position,
and which keys each query reads. The one definition, used by the engine (inference/engine.py)
and by the exported model's ``generate`` (bundled verbatim as vist2_kv_cache.py by
convert/bundle.py: it imports torch and the attention module only).

Per layer the cache holds [batch, kv_heads, slots, head_dim] keys and values. Per row, contiguous:
``[0, visual_len)`` visual tokens of finished chunks (VIST2 only), then ``[visual_len,
visual_len + text_len)`` text of the current chunk (VIST2 and window: less than L tokens; the
full-text baseline: the whole context), then free slots; the last slot is a scratch slot nothing
reads (rows that sit out a step write there). A finished chunk's m visual tokens are written at
``[visual_len, visual_len + m)``, over its own text, whose keys the same step evicts
(``text_len = 0``). So every query reads a prefix of its row (the VIST2 rule of
models/attention.py on this layout, tests/unit/test_inference.py checks it pair by pair):
  - a text query at slot s reads slots [0, s]: the visual tokens of the earlier chunks and its
    own chunk's text up to itself;
  - a visual query of chunk block [v, v + m) reads [0, v + m): visual tokens of chunks up to its own.
Attention therefore runs over the first ``keys`` slots only (the used part, as a growing cache
would), and a single query per row at equal lengths needs no mask tensor at all. Nothing grows
by concatenation: writes go to precomputed slots, eviction is resetting a length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from ..models.attention import CAUSAL


def max_position(n_tokens: int, L: int, m: int) -> int:
    """The largest RoPE position a sequence of ``n_tokens`` text tokens uses (compressed
    positions: chunk j's text at [j m, j m + L), its visual tokens at [j m, (j + 1) m))."""
    full, tail = divmod(n_tokens, L)
    return full * m - 1 if tail == 0 else full * m + tail - 1


@dataclass
class Plan:
    """One forward over some rows of the cache.

    ``slots``: where the new keys/values go, one slice for every row or an index [rows, q];
    ``positions``: RoPE positions [rows, q]; ``keys``: attention reads slots [0, keys) of those
    rows; ``mask``: None (every query reads all ``keys``), ``CAUSAL`` (queries are slots
    [0, keys), each reads the slots up to itself) or bool [rows, 1, q, keys]; ``pairs``: the
    (query, key) pairs attended and ``queries`` the query tokens whose output is used (active
    rows x q), for FLOP counts."""
    rows: slice
    slots: Union[slice, torch.Tensor]
    positions: torch.Tensor
    keys: int
    mask: Union[None, str, torch.Tensor]
    pairs: int
    queries: int


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int,
                 visual_slots: int, text_slots: int, dtype: torch.dtype, device, m: int = 1):
        self.visual_slots, self.text_slots, self.m = visual_slots, text_slots, m
        self.slots = visual_slots + text_slots + 1
        self.scratch = self.slots - 1
        shape = (num_layers, batch, kv_heads, self.slots, head_dim)
        self.device = torch.device(device)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        # per row, on the host: no device sync to plan a step
        self.visual_len: List[int] = [0] * batch
        self.text_len: List[int] = [0] * batch
        self.plan: Optional[Plan] = None          # the forward in progress (``store`` uses it)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache tensors (what the KV memory really is)."""
        return self.k.nbytes + self.v.nbytes

    def reset(self) -> None:
        """Forget every row (the memory stays allocated)."""
        self.visual_len = [0] * len(self.visual_len)
        self.text_len = [0] * len(self.text_len)

    # ------------------------------------------------------------------ slot arithmetic
    def text_plan(self, rows: slice, q: int, active: Sequence[bool]) -> Plan:
        """q tokens per row as text of each row's current chunk; rows not ``active`` write to the
        scratch slot and read slot 0 only (their output is not used)."""
        r = range(*rows.indices(len(self.text_len)))
        start = [self.visual_len[b] + self.text_len[b] for b in r]
        on = [start[i] for i in range(len(r)) if active[i]]
        if not on:
            raise ValueError("text_plan: no active row")
        if max(on) + q > self.scratch:
            raise ValueError(f"the KV cache has {self.scratch} slots per row; {max(on)} are used "
                             f"and {q} more were asked for")
        keys = max(on) + q
        same = len(on) == len(r) and min(on) == max(on)
        positions = torch.tensor([[(self.visual_len[b] // self.m) * self.m + self.text_len[b] + i
                                   for i in range(q)] if a else [0] * q for b, a in zip(r, active)],
                                 device=self.device)
        pairs = sum(q * s + q * (q + 1) // 2 for s in on)
        if same:                                      # every row writes at the same slots
            slots = slice(start[0], start[0] + q)
        else:
            slots = torch.tensor([[s + i for i in range(q)] if a else [self.scratch] * q
                                  for s, a in zip(start, active)], device=self.device)
        if same and q == 1:
            mask = None                               # one query per row reading every key
        elif same and start[0] == 0:
            mask = CAUSAL                             # an empty row's prefill: the causal kernel
        else:
            s = torch.arange(keys, device=self.device)
            qslot = torch.tensor(start, device=self.device)[:, None] + torch.arange(q, device=self.device)
            reads = s <= qslot[:, :, None]
            idle = torch.tensor([not a for a in active], device=self.device)[:, None, None]
            mask = torch.where(idle, s == 0, reads)[:, None]
        return Plan(rows, slots, positions, keys, mask, pairs, q * len(on))

    def visual_plan(self, row: int, q: int) -> Plan:
        """q = k m visual tokens of k finished chunks after the row's visual ones: each reads the
        visual tokens of the chunks up to its own (block-causal; one chunk: no mask)."""
        m, v0 = self.m, self.visual_len[row]
        if v0 + q > self.scratch:
            raise ValueError(f"the KV cache has {self.scratch} slots per row; {v0} are used and {q} "
                             f"more were asked for")
        qslot = v0 + torch.arange(q, device=self.device)
        keys = v0 + q
        mask = None
        if q > m:
            mask = (torch.arange(keys, device=self.device) // m <= (qslot // m)[:, None])[None, None]
        pairs = sum((v0 // m + j + 1) * m * m for j in range(q // m))
        return Plan(slice(row, row + 1), slice(v0, v0 + q), qslot[None], keys, mask, pairs, q)

    # ------------------------------------------------------------------ bookkeeping
    def advance_text(self, plan: Plan, q: int, active: Sequence[bool]) -> None:
        for i, b in enumerate(range(*plan.rows.indices(len(self.text_len)))):
            if active[i]:
                self.text_len[b] += q

    def advance_visual(self, row: int, q: int) -> None:
        """q visual tokens were written over the current chunk's text: the text is evicted."""
        self.visual_len[row] += q
        self.text_len[row] = 0

    # ------------------------------------------------------------------ the write of one layer
    def layer(self, index: int, plan: Optional[Plan] = None) -> "LayerWrite":
        return LayerWrite(self, index, plan or self.plan)


@dataclass
class LayerWrite:
    """One layer's part of one forward: ``store`` keeps the new K/V at the plan's slots and hands
    back the keys/values the queries read (the first ``plan.keys`` slots of the plan's rows)."""
    cache: KVCache
    index: int
    plan: Plan

    def store(self, k: torch.Tensor, v: torch.Tensor):
        """k, v [rows, kv_heads, q, head_dim] -> keys, values [rows, kv_heads, plan.keys, head_dim]."""
        p = self.plan
        K = self.cache.k[self.index, p.rows]
        V = self.cache.v[self.index, p.rows]
        if isinstance(p.slots, slice):
            K[:, :, p.slots] = k
            V[:, :, p.slots] = v
        else:
            idx = p.slots[:, None, :, None].expand(-1, K.shape[1], -1, K.shape[3])
            K.scatter_(2, idx, k.to(K.dtype))
            V.scatter_(2, idx, v.to(V.dtype))
        return K[:, :, :p.keys], V[:, :, :p.keys]
