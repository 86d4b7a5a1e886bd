"""Cut documents into chunks, group chunks into windows, pack windows into fixed-length rows.

A *segment* is a window of consecutive chunks of one document, short enough to always fit a row
(``max_chunks_per_segment``). Each segment is laid out as the spec says:
``T_1 V_1 T_2 V_2 ... V_{n-1} T_n``; a chunk in read-back mode puts its V_i and its read-back
marker before its T_i and always has an image (the last chunk too). That is the *logical*
(interleaved) order; rows are stored in the *blocked* physical order (``reorder``): all visual
tokens of the row, then all text tokens, then padding. The mask, RoPE positions and labels come
from per-token metadata, so the order changes no loss; it only lets a block-sparse kernel skip
most 128 x 128 tiles (tools/block_mask_report.py). Segments fill rows of ``seq_length`` tokens in
order; one that does not fit the rest of a row is split at a chunk boundary, so the padding at
the end of a row (kind PAD, doc -1) is shorter than L + m tokens (L + 2 m + 1 with read-back
chunks: the next chunk with its image and marker, and the image of the chunk before it). Every
token of every document lands in exactly one segment; nothing is dropped (the only remainder is
that padding).

Labels follow next-token prediction over text: text token t > 0 of a chunk is predicted by text
token t - 1; the first token of chunk i by the last visual token of V_{i-1} (from images alone),
or in read-back mode by the chunk's *read-back marker*: one more text position before T_i (input
``READBACK_MARKER``, RoPE position (i - 1) m, T_i shifted to start one after it), which sees
V_1 .. V_i. So the last visual token of V_i predicts the first token of T_{i+1} in both modes;
without the marker it would be trained towards T_i[0] in read-back mode and T_{i+1}[0] otherwise
from the same inputs (docs/fidelity.md, "Retention with a decoder that reads"). The first token of
a segment's first chunk has no predictor and no loss unless that chunk is read back.

The controls (``model.context`` text / window, docs/spec.md "Controls") are packed exactly like
the VIST2 model, and ``control_row`` derives their row from the VIST2 row in one place: the
visual tokens are dropped and the label a visual token carried (the first token of the next
chunk) moves to the last text token of the chunk that visual block encodes. So a control row
holds the same text tokens with the same targets and weights as the model's row, by
construction; ``target`` (the target's offset in its segment's text) identifies each target across
contexts and ``first_target`` marks the chunk-first ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, get_args

import numpy as np

from ..config.schema import Context
from ..models.attention import PAD, TEXT, VISUAL


@dataclass(frozen=True)
class Segment:
    doc_index: int           # document in the indexed dataset
    start: int               # first token of the window inside the document
    length: int              # text tokens in the window
    readback: tuple          # one bool per chunk

    def num_chunks(self, L: int) -> int:
        return -(-self.length // L)

    def images(self, L: int) -> int:
        """Visual blocks of this segment: every chunk but the last, and every read-back chunk."""
        n = self.num_chunks(L)
        return sum(1 for c in range(n) if self.readback[c] or c < n - 1)

    def row_tokens(self, L: int, m: int) -> int:
        """Tokens this segment occupies in a row (text, read-back markers, visual)."""
        return self.length + sum(self.readback) + self.images(L) * m


def max_chunks_per_segment(seq_length: int, L: int, m: int, readback: bool) -> int:
    """Most chunks a segment may hold so that it always fits a row: n (L + m + 1) <= S when any
    chunk may be in read-back mode (every chunk then may carry an image and a read-back marker),
    else n L + (n - 1) m <= S (the last chunk's image is never needed)."""
    return max(1, seq_length // (L + m + 1) if readback else (seq_length + m) // (L + m))


def readback_seq_length(seq_length: int, L: int, m: int) -> int:
    """The row length (>= ``seq_length``) at which segments with read-back chunks hold as many
    chunks as rows of ``seq_length`` without read-back (``max_chunks_per_segment``)."""
    return max(seq_length, max_chunks_per_segment(seq_length, L, m, False) * (L + m + 1))


def readback_shortens_segments(seq_length: int, L: int, m: int) -> Optional[str]:
    """A note when rows of ``seq_length`` hold fewer chunks per segment with read-back chunks on
    than without (``max_chunks_per_segment``), else None. Evaluation rows and the controls never
    read back, so such a run trains on shorter histories than it is measured on: its last chunk
    index is never a history target (measured in docs/fidelity.md, "The read-back marker")."""
    with_rb, without = (max_chunks_per_segment(seq_length, L, m, rb) for rb in (True, False))
    if with_rb >= without:
        return None
    return (f"read-back chunks are on: a segment holds at most {with_rb} chunks (n (L + m + 1) <= "
            f"data.seq_length {seq_length}), against {without} without read-back, as evaluation rows "
            f"and the controls hold them; at data.seq_length={readback_seq_length(seq_length, L, m)} read-back "
            f"segments hold {without}")


def segment_document(doc_index: int, doc_length: int, L: int, m: int, seq_length: int,
                     readback_fraction: float, rng: np.random.Generator) -> List[Segment]:
    per = max_chunks_per_segment(seq_length, L, m, readback_fraction > 0) * L
    out = []
    for start in range(0, doc_length, per):
        length = min(per, doc_length - start)
        n = -(-length // L)
        flags = tuple(bool(x) for x in rng.random(n) < readback_fraction) if readback_fraction else (False,) * n
        out.append(Segment(doc_index, start, length, flags))
    return out


def split_segment(seg: Segment, chunks: int, L: int) -> Tuple[Segment, Segment]:
    """The first ``chunks`` chunks of a segment, and the rest (which starts a new history)."""
    n = chunks * L
    return (Segment(seg.doc_index, seg.start, n, seg.readback[:chunks]),
            Segment(seg.doc_index, seg.start + n, seg.length - n, seg.readback[chunks:]))


def pack_segments(segments: Sequence[Segment], L: int, m: int, seq_length: int) -> List[List[Segment]]:
    """Fill rows in order. A segment that does not fit the space left in a row is split at the
    last chunk boundary that fits; the rest opens the next row. So every row but the last
    wastes fewer than L + m tokens (one more chunk and the image of the chunk before it), or
    L + 2 m + 1 with read-back chunks (also the chunk's own image and its marker)."""
    rows: List[List[Segment]] = [[]]
    free = seq_length
    for seg in segments:
        while seg is not None:
            size = seg.row_tokens(L, m)
            if size > seq_length:   # cannot happen by construction of segment_document
                raise ValueError(f"segment of {size} tokens does not fit a row of {seq_length}")
            if size <= free:
                rows[-1].append(seg)
                free -= size
                seg = None
                continue
            fits = max((k for k in range(1, seg.num_chunks(L))
                        if split_segment(seg, k, L)[0].row_tokens(L, m) <= free), default=0)
            if fits:
                head, seg = split_segment(seg, fits, L)
                rows[-1].append(head)
            rows.append([])
            free = seq_length
    return [r for r in rows if r]


@dataclass
class RowArrays:
    """One packed row as numpy arrays of length seq_length, plus the chunks to render."""
    tokens: np.ndarray
    doc: np.ndarray
    chunk: np.ndarray
    kind: np.ndarray
    readback: np.ndarray
    position: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    target: np.ndarray               # offset of the label in its segment's text; -1 = no label
    first_target: np.ndarray         # bool: the label is the first token of a chunk (> 0)
    image_chunks: List[np.ndarray]   # token ids of each visual block's chunk, in row order


MASK_ID = 0      # a masked text input: the id visual and padding positions hold (never a label)
READBACK_MARKER = MASK_ID    # the read-back marker's input: no token, told apart by its place


def readback_markers(kind: np.ndarray, readback: np.ndarray, chunk: np.ndarray, position: np.ndarray,
                     m: int) -> np.ndarray:
    """bool: the read-back markers of a VIST2 row (numpy or torch arrays of any shape): the text
    positions of read-back chunks at their chunk's first compressed position (their text starts
    one later). A marker's target, like a visual token's, is predicted from images alone."""
    return (kind == TEXT) & (readback != 0) & (position == chunk * m)


def readback_predictors(kind: np.ndarray, readback: np.ndarray) -> np.ndarray:
    """bool: the positions whose target is a token of a read-back chunk (numpy or torch arrays):
    its marker and its text. A read-back chunk's visual block predicts the next chunk's first
    token, a history target."""
    return (kind == TEXT) & (readback != 0)


ORDERS = ("blocked", "interleaved")
CONTEXTS = get_args(Context)               # declared once, in config/schema.py
PER_TOKEN = ("tokens", "doc", "chunk", "kind", "readback", "position", "labels", "loss_mask",
             "target", "first_target")


def _empty_row(S: int) -> RowArrays:
    return RowArrays(tokens=np.zeros(S, np.int64), doc=np.full(S, -1, np.int64),
                     chunk=np.zeros(S, np.int64), kind=np.full(S, PAD, np.int64),
                     readback=np.zeros(S, bool), position=np.zeros(S, np.int64),
                     labels=np.zeros(S, np.int64), loss_mask=np.zeros(S, np.float32),
                     target=np.full(S, -1, np.int64), first_target=np.zeros(S, bool), image_chunks=[])


def assemble_row(segments: Sequence[Segment], doc_tokens: Sequence[np.ndarray], L: int, m: int,
                 seq_length: int, response_masks: Optional[Sequence[np.ndarray]] = None,
                 order: str = "blocked", context: str = "vist2") -> RowArrays:
    """Lay out a row; ``doc_tokens[i]`` holds the text tokens of ``segments[i]``. With
    ``response_masks`` (instruction data), only targets whose mask is 1 carry loss. ``order``:
    the physical token order (``reorder``); ``context``: the model's or a control's row
    (``control_row``)."""
    if order not in ORDERS:
        raise ValueError(f"unknown row order '{order}' (expected one of {', '.join(ORDERS)})")
    if context not in CONTEXTS:
        raise ValueError(f"unknown context '{context}' (expected one of {', '.join(CONTEXTS)})")
    S = seq_length
    row = _empty_row(S)
    pos = 0
    for slot, (seg, toks) in enumerate(zip(segments, doc_tokens)):
        n = seg.num_chunks(L)
        last_visual = {}            # chunk index -> row index of the last token of its V block

        def put_visual(c):
            nonlocal pos
            sl = slice(pos, pos + m)
            row.kind[sl], row.doc[sl], row.chunk[sl] = VISUAL, slot, c
            row.readback[sl] = seg.readback[c]
            row.position[sl] = np.arange(c * m, (c + 1) * m)
            row.image_chunks.append(np.asarray(toks[c * L:(c + 1) * L]))
            last_visual[c] = pos + m - 1
            pos += m

        for c in range(n):
            text = np.asarray(toks[c * L:(c + 1) * L])
            first_from = last_visual.get(c - 1)          # predictor of the first token: V_{c-1}
            if seg.readback[c]:
                put_visual(c)
                # the read-back marker: a text position of chunk c before its text, seeing V_1..V_c
                row.tokens[pos], row.kind[pos], row.doc[pos], row.chunk[pos] = READBACK_MARKER, TEXT, slot, c
                row.readback[pos], row.position[pos] = True, c * m
                first_from, pos = pos, pos + 1
            sl = slice(pos, pos + len(text))
            row.tokens[sl], row.kind[sl], row.doc[sl], row.chunk[sl] = text, TEXT, slot, c
            row.readback[sl] = seg.readback[c]
            row.position[sl] = c * m + int(seg.readback[c]) + np.arange(len(text))
            weight = np.ones(len(text), np.float32) if response_masks is None else \
                np.asarray(response_masks[slot][c * L:(c + 1) * L], np.float32)
            if first_from is not None:
                row.labels[first_from], row.loss_mask[first_from] = text[0], weight[0]
                row.target[first_from], row.first_target[first_from] = c * L, c > 0
            row.labels[pos:pos + len(text) - 1] = text[1:]
            row.loss_mask[pos:pos + len(text) - 1] = weight[1:]
            row.target[pos:pos + len(text) - 1] = c * L + np.arange(1, len(text))
            pos += len(text)
            if not seg.readback[c] and c < n - 1:
                put_visual(c)
    if pos > S:
        raise ValueError(f"row overflows: {pos} tokens > seq_length {S}")
    return reorder(row if context == "vist2" else control_row(row, context, L, m), order)


def control_row(row: RowArrays, context: str, L: int, m: int) -> RowArrays:
    """A control's row from the model's interleaved ``row``: the same text tokens, targets and
    weights, without visual tokens (the padding grows by their number).

    The label on the last token of V_c (the first token of chunk c + 1) moves to the last text
    token of chunk c, which had none. Positions: 'text' numbers a segment's text 0, 1, ... (a
    plain causal model over the document); 'window' restarts at 0 in every chunk (each chunk as
    if alone), so chunk c + 1's first token is predicted from chunk c alone."""
    if row.readback.any():
        raise ValueError(f"the '{context}' control has no images, so no chunk can be in read-back mode")
    labels, loss_mask = row.labels.copy(), row.loss_mask.copy()
    target, first = row.target.copy(), row.first_target.copy()
    visual = np.nonzero((row.kind == VISUAL) & (row.target >= 0))[0]
    for p in visual:
        # V_c follows T_c in the interleaved order: T_c's last token is right before the block
        q = p - m
        assert row.kind[q] == TEXT and row.chunk[q] == row.chunk[p] and target[q] < 0
        labels[q], loss_mask[q], target[q], first[q] = labels[p], loss_mask[p], target[p], first[p]
    keep = np.nonzero(row.kind != VISUAL)[0]
    offset = row.position - row.chunk * m                # a text token's offset in its chunk
    position = offset if context == "window" else row.chunk * L + offset
    out = _empty_row(len(row.tokens))
    for name, values in (("tokens", row.tokens), ("doc", row.doc), ("chunk", row.chunk),
                         ("kind", row.kind), ("position", position), ("labels", labels),
                         ("loss_mask", loss_mask), ("target", target), ("first_target", first)):
        getattr(out, name)[:len(keep)] = values[keep]
    return out


def mask_readback_inputs(row, max_share: float, rng: np.random.Generator) -> np.ndarray:
    """``row``: a RowArrays, or a dict of its per-token arrays. -> its tokens with part of each read-back chunk's text inputs replaced by ``MASK_ID``:
    each read-back chunk draws a share u ~ U(0, max_share) and masks each of its text inputs with
    probability u; labels, loss mask and metadata are unchanged (any physical order).

    Why: in a read-back chunk the target of text position t is token t + 1, which the language
    prior predicts from tokens <= t as well as the image shows it; the prior wins and the image
    is ignored (docs/fidelity.md). A masked input hides that evidence, so the target has to come
    from V_i. Shares drawn per chunk from 0 to ``max_share`` keep unmasked chunks (what
    read-back at evaluation and history chunks look like) in the mix."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    tokens, doc, chunk = get("tokens").copy(), get("doc"), get("chunk")
    if max_share <= 0:
        return tokens
    text_rb = (get("kind") == TEXT) & get("readback")
    for d, c in sorted({(int(d), int(c)) for d, c in zip(doc[text_rb], chunk[text_rb])}):
        where = np.nonzero(text_rb & (doc == d) & (chunk == c))[0]
        share = rng.uniform(0.0, max_share)
        tokens[where[rng.random(len(where)) < share]] = MASK_ID
    return tokens


def reorder(row: RowArrays, order: str) -> RowArrays:
    """Permute an interleaved row's tokens, with their metadata and labels, into ``order``.
    'blocked': every visual token of the row first, then every text token, then the padding, each
    kind in its interleaved order (segments in row order, chunks in order), so the visual blocks
    keep the order of ``image_chunks`` and each text chunk stays contiguous and in order."""
    if order == "interleaved":
        return row
    rank = np.where(row.kind == VISUAL, 0, np.where(row.kind == TEXT, 1, 2))
    perm = np.argsort(rank, kind="stable")
    return RowArrays(**{f: getattr(row, f)[perm] for f in PER_TOKEN}, image_chunks=row.image_chunks)
