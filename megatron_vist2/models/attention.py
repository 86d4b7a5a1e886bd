"""The VIST2 attention rule, defined once over per-token metadata.

A packed row carries, per token: the document it belongs to (``doc``, -1 for padding), the chunk
index inside that document (``chunk``), whether it is text or visual (``kind``) and whether its
chunk is in OCR read-back mode (``readback``). ``vist2_mask_mod`` states the spec's rule for one
(query, key) pair; the same function is evaluated densely for SDPA and block-sparsely by
flex_attention, so there is one definition and no S x S tensor travels in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F

TEXT, VISUAL, PAD = 0, 1, -1
CAUSAL = "causal"     # a mask ``attend`` takes: plain causal over equal query and key lengths


@dataclass
class TokenLayout:
    """Per-token metadata of a packed batch; every field is a [batch, seq] tensor."""
    doc: torch.Tensor        # int64, document slot within the row, -1 = padding
    chunk: torch.Tensor      # int64, chunk index within the document (0-based)
    kind: torch.Tensor       # int64, TEXT / VISUAL / PAD
    readback: torch.Tensor   # bool, the token's chunk is in read-back mode
    position: torch.Tensor   # int64, compressed RoPE position

    def to(self, device) -> "TokenLayout":
        return TokenLayout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def vist2_mask_mod(layout: TokenLayout, context: str = "vist2") -> Callable:
    """Return mask_mod(b, h, q, k) -> bool: may query q attend to key k in row b?

    Rules (../docs/spec.md, "Attention"):
      text q in chunk i:   text k of chunk i with k <= q; visual k of chunks j < i;
                           plus visual k of chunk i when chunk i is in read-back mode.
      visual q in chunk i: visual k of chunks j <= i (bidirectional inside its own block).
      never across documents; a padding query sees only itself (keeps softmax finite).
    ``context`` (model.context): 'text' lets text q see the text k <= q of every chunk of its
    document (plain causal; its rows have no visual tokens); 'window' rows have no visual tokens,
    so the rule above leaves each chunk its own text only.
    """
    if context not in ("vist2", "text", "window"):
        raise ValueError(f"unknown context '{context}' (expected vist2, text or window)")
    across_chunks = context == "text"
    # One int64 per token, so a (q, k) pair costs two gathers instead of nine: document + 1
    # (0 = padding) in bits 33+, chunk in bits 3-32, kind + 1 in bits 1-2, read-back in bit 0.
    code = (((layout.doc + 1) << 33) | (layout.chunk << 3) | ((layout.kind + 1) << 1)
            | layout.readback.long())

    def mask_mod(b, h, q, k):
        cq, ck = code[b, q], code[b, k]
        qd, kd = cq >> 33, ck >> 33
        qc, kc = cq >> 3, ck >> 3                   # document and chunk: compared together
        qkind, kkind = (cq >> 1) & 3, (ck >> 1) & 3
        qt, kt = qkind == TEXT + 1, kkind == TEXT + 1
        qv, kv = qkind == VISUAL + 1, kkind == VISUAL + 1
        text_sees_text = kt & ((qd == kd) if across_chunks else (kc == qc)) & (k <= q)
        text_sees_image = kv & ((kc < qc) | (((cq & 1) == 1) & (kc == qc)))
        image_sees_image = kv & (kc <= qc)
        same_doc = (qd == kd) & (qd > 0)
        allowed = same_doc & ((qt & (text_sees_text | text_sees_image)) | (qv & image_sees_image))
        return allowed | ((qd == 0) & (q == k))

    return mask_mod


def dense_mask(layout: TokenLayout, context: str = "vist2") -> torch.Tensor:
    """Evaluate the rule on every pair: bool [batch, 1, seq, seq] for SDPA (tests, small rows)."""
    batch, seq = layout.doc.shape
    dev = layout.doc.device
    b = torch.arange(batch, device=dev)[:, None, None]
    q = torch.arange(seq, device=dev)[None, :, None]
    k = torch.arange(seq, device=dev)[None, None, :]
    return vist2_mask_mod(layout, context)(b, None, q, k).unsqueeze(1)


_compiled_flex = None


def block_mask(layout: TokenLayout, block_size: int = 128, context: str = "vist2"):
    """flex_attention BlockMask from the same rule (no dense mask is materialised)."""
    from torch.nn.attention.flex_attention import create_block_mask
    batch, seq = layout.doc.shape
    return create_block_mask(vist2_mask_mod(layout, context), batch, None, seq, seq,
                             device=layout.doc.device, BLOCK_SIZE=block_size)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention over [batch, heads, seq, head_dim].

    ``mask``: None (full bidirectional), ``CAUSAL`` (SDPA's causal kernel: no mask tensor; the
    queries and keys must be the same positions), a bool tensor [batch, 1, seq, seq], or a flex
    BlockMask.
    Grouped-query attention: k/v may have fewer heads than q (query head i uses kv head
    i // (heads / kv_heads), as in Hugging Face's repeat_kv).
    """
    if isinstance(mask, str):
        if mask != CAUSAL or q.shape[2] != k.shape[2]:
            raise ValueError(f"mask '{mask}': only '{CAUSAL}' over as many keys as queries")
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
                                              enable_gqa=k.shape[1] != q.shape[1])
    b, heads, queries, d = q.shape
    if mask is None and queries == 1 and k.shape[1] != heads:
        # One query per head reading every key (an inference decode step) with grouped KV heads:
        # the query heads that share a KV head are that head's queries (the same attention), one
        # SDPA call without its GQA path, which copies K and V per query head on the CPU
        # (benchmarks/long_writing.py: 30 % of a decode step's attention at 8K keys).
        kv = k.shape[1]
        out = F.scaled_dot_product_attention(q.reshape(b, kv, heads // kv, d), k, v, dropout_p=dropout_p)
        return out.reshape(b, heads, 1, d)
    if mask is None or isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              enable_gqa=k.shape[1] != q.shape[1])
    if dropout_p:
        raise ValueError("attention dropout needs the sdpa backend")
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        # Eager flex is ~35x slower than compiled; never use it in a hot path.
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def resolve_backend(backend: str, device: torch.device, attention_dropout: float = 0.0) -> str:
    """``model.attention_backend`` as it runs on ``device``. 'auto' (the default): the block-sparse
    flex path on a GPU, where it compiles into fused forward and backward kernels that skip the
    tiles the mask leaves empty (SDPA with a dense mask cannot use the flash or memory-efficient
    kernels with GQA: it falls back to cuDNN or to math, which keeps every S x S score); dense
    SDPA on the CPU, where flex has no backward, and with attention dropout, which flex lacks."""
    if backend != "auto":
        return backend
    return "flex" if device.type == "cuda" and not attention_dropout else "sdpa"


def build_mask(layout: TokenLayout, backend: str, context: str = "vist2"):
    """The mask object ``attend`` takes, for backend 'sdpa' (dense bool) or 'flex' (BlockMask)
    ('auto': ``resolve_backend`` on the layout's device)."""
    backend = resolve_backend(backend, layout.doc.device)
    if backend == "sdpa":
        return dense_mask(layout, context)
    if backend == "flex":
        return block_mask(layout, context=context)
    raise ValueError(f"unknown attention backend '{backend}' (expected 'sdpa' or 'flex')")
