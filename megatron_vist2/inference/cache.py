"""Preallocated KV cache: per layer, [batch, kv_heads, slots, head_dim] for keys and values.

Slot layout per sequence: ``[0, visual)`` visual tokens of finished chunks (VIST2 only), then
``[visual, visual + text)`` text of the current chunk (VIST2: at most L; baseline: the whole
context), then one scratch slot that is never attended (rows that sit out a step write there).
Nothing grows by concatenation: writes go to precomputed slots, eviction is resetting a length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int,
                 visual_slots: int, text_slots: int, dtype: torch.dtype, device):
        self.visual_slots, self.text_slots = visual_slots, text_slots
        self.slots = visual_slots + text_slots + 1
        self.scratch = self.slots - 1
        shape = (num_layers, batch, kv_heads, self.slots, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.visual_len = torch.zeros(batch, dtype=torch.long, device=device)
        self.text_len = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache tensors (what the KV memory really is)."""
        return self.k.nbytes + self.v.nbytes

    def layer(self, index: int, rows: slice, write_slots: Union[torch.Tensor, slice],
              visible: Optional[int] = None) -> "LayerWrite":
        return LayerWrite(self, index, rows, write_slots, visible)


@dataclass
class LayerWrite:
    """One layer's part of one forward: store new K/V at ``write_slots`` ([rows, q], or one
    slice of q slots for every row: a plain copy instead of a scatter) and hand back every slot
    of those rows (the attention mask says which ones count), or only the first ``visible``
    slots (a prefill that attends to exactly those keys)."""
    cache: KVCache
    index: int
    rows: slice
    write_slots: Union[torch.Tensor, slice]
    visible: Optional[int] = None

    def store(self, k: torch.Tensor, v: torch.Tensor):
        """k, v [rows, kv_heads, q, head_dim] -> all keys/values [rows, kv_heads, slots, head_dim]."""
        K = self.cache.k[self.index, self.rows]
        V = self.cache.v[self.index, self.rows]
        if isinstance(self.write_slots, slice):
            K[:, :, self.write_slots] = k
            V[:, :, self.write_slots] = v
        else:
            idx = self.write_slots[:, None, :, None].expand(-1, K.shape[1], -1, K.shape[3])
            K.scatter_(2, idx, k.to(K.dtype))
            V.scatter_(2, idx, v.to(V.dtype))
        if self.visible is not None:
            return K[:, :, :self.visible], V[:, :, :self.visible]
        return K, V
