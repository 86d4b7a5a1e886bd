"""FLOPs from the config alone (no model is built): the forward FLOPs of each part per token or
image (``forward_flops``), the (query, key) pairs the VIST2 mask allows in a batch
(``attended_pairs``) and the model FLOPs of one training pass (``training_flops``, the MFU
numerator). Parameter counts are config/derived.py ``analytic_parameter_counts``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import Config
from ..config.derived import name_under, padded_vocab_size


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of the parts (2 x matmul parameters per token; attention 4 d per query-key
    pair per layer and head). Training costs about 3x these (forward + backward)."""
    llm_linear_per_token: int       # every layer's Q, K, V, O and SwiGLU, plus the output layer
    llm_attention_per_key: int      # per query and attended key, all layers and heads
    vision_per_image: int           # ViT on one chunk's image (patch embedding, matmuls, attention)
    aligner_per_image: int          # k x k merge + linear into the LLM width, m tokens


def forward_flops(cfg: Config) -> ForwardFlops:
    m, llm, v = cfg.model, cfg.model.llm, cfg.model.vision
    D, e = llm.hidden_size, llm.head_dim
    per_layer = D * e * (2 * llm.num_heads + 2 * llm.num_kv_heads) + 3 * D * llm.ffn_hidden_size
    P = m.patches_per_image
    vit_matmul = v.num_layers * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.ffn_hidden_size)
    k2 = m.aligner.merge ** 2
    return ForwardFlops(
        llm_linear_per_token=2 * (llm.num_layers * per_layer + padded_vocab_size(cfg) * D),
        llm_attention_per_key=4 * llm.num_layers * llm.num_heads * e,
        vision_per_image=(2 * (vit_matmul + v.num_channels * v.patch_size ** 2 * v.hidden_size) * P
                          + 4 * v.num_layers * v.hidden_size * P * P),
        aligner_per_image=2 * k2 * v.hidden_size * D * m.visual_tokens_per_chunk)


def attended_pairs(layout, context: str = "vist2") -> int:
    """(query, key) pairs the VIST2 mask allows in a batch, padding queries excluded, counted per
    chunk instead of per pair (it runs on every training step, on the main thread: no S x S mask
    is built and no Python loop runs over tokens). Within a document: a text token of chunk c sees
    the text of c up to itself, the visual tokens of the chunks before c, and those of c in
    read-back mode; a visual token of c sees the visual tokens of chunks <= c (models/attention.py;
    the tests compare with the rule pair by pair). The text control (``context`` 'text') sees the
    text of its whole document: one chunk, as counted here."""
    import numpy as np

    from ..models.attention import TEXT, VISUAL
    doc, chunk, kind, readback = (np.asarray(getattr(layout, n).cpu(), dtype=np.int64)
                                  for n in ("doc", "chunk", "kind", "readback"))
    real = (doc >= 0) & ((kind == TEXT) | (kind == VISUAL))
    if not real.any():
        return 0
    rows = np.broadcast_to(np.arange(doc.shape[0])[:, None], doc.shape)[real]
    d, k, r = doc[real], kind[real], readback[real]
    c = np.where(k == TEXT, 0, chunk[real]) if context == "text" else chunk[real]
    # one group per (row, document, chunk), sorted in that order
    docs, chunks = int(d.max()) + 1, int(c.max()) + 1
    groups, inverse = np.unique((rows * docs + d) * chunks + c, return_inverse=True)
    n_text = np.bincount(inverse, weights=k == TEXT, minlength=len(groups)).astype(np.int64)
    n_vis = np.bincount(inverse, weights=k == VISUAL, minlength=len(groups)).astype(np.int64)
    in_readback = np.zeros(len(groups), dtype=bool)
    in_readback[inverse[k == TEXT]] = r[k == TEXT] > 0
    # visual tokens of the same document's earlier chunks (in this row)
    before = np.cumsum(n_vis) - n_vis
    first = np.r_[True, groups[1:] // chunks != groups[:-1] // chunks]
    earlier = before - before[np.maximum.accumulate(np.where(first, np.arange(len(groups)), 0))]
    total = (n_text * (n_text + 1) // 2 + n_text * (earlier + np.where(in_readback, n_vis, 0))
             + n_vis * (earlier + n_vis))
    return int(total.sum())


def training_flops(cfg: Config, layout, num_images: int, frozen=()) -> float:
    """Model FLOPs of one training pass over a batch: the LLM's matmuls for every non-padding
    token, its attention over the pairs the mask allows, the ViT and the aligner for every image.
    A trained part costs 3 x its forward (forward, input and weight gradients); a frozen part 2x
    when a trained part before it needs its input gradient, else 1x (``frozen``: the
    ``train.freeze`` prefixes). Activation recomputation is not counted (MFU, not HFU)."""
    from ..models.attention import PAD

    def covered(part):
        return any(name_under(part, p) for p in frozen)
    vision, aligner = covered("front.vision"), covered("front.aligner")
    llm = covered("layers") and covered("front.embedding") and covered("head")
    f = forward_flops(cfg)
    tokens = int((layout.kind != PAD).sum())
    pairs = attended_pairs(layout, cfg.model.context)
    llm_forward = f.llm_linear_per_token * tokens + f.llm_attention_per_key * pairs
    return ((3 if not llm else 1 if vision and aligner else 2) * llm_forward
            + (3 if not aligner else 1 if vision else 2) * f.aligner_per_image * num_images
            + (1 if vision else 3) * f.vision_per_image * num_images)
