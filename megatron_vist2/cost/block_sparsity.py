"""What a block-sparse attention kernel computes for a packed row: the hardware-independent
block-mask report.

FlexAttention (and every tiled kernel) works on B x B tiles of the score matrix (B = 128): a tile
whose pairs are all masked is skipped, a tile whose pairs are all allowed runs without the mask
function, and a *partial* tile runs with it. So the attention cost of a row is set by its
non-empty tiles, not by the pairs the mask allows; both depend on the row's physical token order
(data/packing.py: ``order``). ``block_counts`` evaluates a ``mask_mod`` (the one rule,
models/attention.py) strip by strip, B query rows at a time, so no S x S tensor is built.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.packing import assemble_row, pack_segments, segment_document
from ..models.attention import TokenLayout, vist2_mask_mod

BLOCK = 128


@dataclass
class BlockCounts:
    pairs: int         # (query, key) pairs the mask allows, padding queries included
    full: int          # B x B tiles with every pair allowed (computed without the mask function)
    partial: int       # tiles with some pairs allowed (computed with it)
    empty: int         # tiles skipped

    @property
    def computed(self) -> int:
        return self.full + self.partial

    def __add__(self, other: "BlockCounts") -> "BlockCounts":
        return BlockCounts(self.pairs + other.pairs, self.full + other.full,
                           self.partial + other.partial, self.empty + other.empty)


def document_causal_mask_mod(layout: TokenLayout) -> Callable:
    """Plain causal attention inside each document of the same row (the baseline a text-only
    model trained on the same rows pays); a padding query sees only itself, as in VIST2."""
    doc = layout.doc

    def mask_mod(b, h, q, k):
        qd, kd = doc[b, q], doc[b, k]
        return ((qd == kd) & (qd >= 0) & (k <= q)) | ((qd < 0) & (q == k))

    return mask_mod


def block_counts(layout: TokenLayout, mask_mod: Callable = None, block: int = BLOCK) -> BlockCounts:
    """Tiles of ``block`` x ``block`` a block-sparse kernel computes for every row of ``layout``
    under ``mask_mod`` (default: the VIST2 rule), summed over the rows. A row whose length is not a
    multiple of ``block`` is padded as FlexAttention pads it (the padded pairs count as masked)."""
    mask_mod = mask_mod or vist2_mask_mod(layout)
    batch, seq = layout.doc.shape
    nb = -(-seq // block)
    total = BlockCounts(0, 0, 0, 0)
    for b in range(batch):
        # Tiles whose queries and keys share no document (and are off the diagonal, where a
        # padding query sees itself) are empty under any rule that stays inside documents:
        # only the others are evaluated (a row of many documents costs far less than S x S).
        doc = torch.full((nb * block,), -2, dtype=torch.long)
        doc[:seq] = layout.doc[b].cpu()
        tiles = doc.view(nb, block)
        present = torch.zeros(nb, int(doc.max()) + 3, dtype=torch.bool)
        present.scatter_(1, tiles + 2, True)
        present[:, 0] = False                                   # beyond the row
        present[:, 1] = False                                   # padding: the diagonal only
        share = (present.float() @ present.float().t()) > 0
        share |= torch.eye(nb, dtype=torch.bool)
        bi = torch.tensor(b)
        for qb in range(nb):
            kbs = share[qb].nonzero()[:, 0]
            q = torch.arange(qb * block, (qb + 1) * block)
            k = (kbs[:, None] * block + torch.arange(block)[None]).reshape(-1)
            allowed = mask_mod(bi, None, q.clamp(max=seq - 1)[:, None], k.clamp(max=seq - 1)[None, :])
            allowed &= (q < seq)[:, None] & (k < seq)[None, :]      # FlexAttention's padding: masked
            per_tile = allowed.view(block, len(kbs), block).sum(dim=(0, 2))
            full = int((per_tile == block * block).sum())
            nonempty = int((per_tile > 0).sum())
            total = total + BlockCounts(int(per_tile.sum()), full, nonempty - full, nb - nonempty)
    return total


def row_layout(segments, L: int, m: int, seq: int, order: str) -> TokenLayout:
    """The layout ``data/packing.py`` gives a row of ``segments`` in ``order`` (token ids are not
    needed to count tiles: zeros stand in)."""
    row = assemble_row(segments, [[0] * s.length for s in segments], L, m, seq, order=order)
    return TokenLayout(*(torch.from_numpy(getattr(row, f))[None]
                         for f in ("doc", "chunk", "kind", "readback", "position")))


def rows_report(rows, L: int, m: int, seq: int, orders, block: int = BLOCK) -> dict:
    """{'document-causal' and each order: BlockCounts summed over ``rows`` (lists of segments)}.
    Document-causal attention is counted on the interleaved row (its documents are contiguous
    runs in every order, so its tiles are the same in all)."""
    out = {}
    for segments in rows:
        lay = row_layout(segments, L, m, seq, "interleaved")
        counts = {"document-causal": block_counts(lay, document_causal_mask_mod(lay), block)}
        counts.update({o: block_counts(row_layout(segments, L, m, seq, o), None, block) for o in orders})
        out = {k: out.get(k, BlockCounts(0, 0, 0, 0)) + v for k, v in counts.items()}
    return out


@functools.lru_cache(maxsize=32)
def full_row_counts(L: int, m: int, seq: int, readback_fraction: float = 0.0,
                    order: str = "blocked") -> BlockCounts:
    """Tiles of one row filled by a single long document (the planner's row: long documents, as
    in the 8B recipe), read-back chunks drawn at ``readback_fraction`` with a fixed seed."""
    segs = segment_document(0, 2 * seq, L, m, seq, readback_fraction, np.random.default_rng(0))
    return block_counts(row_layout(pack_segments(segs, L, m, seq)[0], L, m, seq, order))
