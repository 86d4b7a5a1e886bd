"""OCR read-back: the model sees only a chunk's image (V_i, read-back mode: its text attends to
V_i) and generates the chunk's text greedily, token by token; the text is compared with the
chunk's true text (CER, exact-chunk match), by the font size the renderer chose for it. The
same chunks read from each other's images give the blind score: what a model that does not read
its images gets from the language prior and the chunk-level statistics of text alone.

Each chunk is one tiny interleaved row ``V_i M_i T_i`` of m + 1 + L tokens laid out by the
packer (data/packing.py) in read-back mode (M_i: the read-back marker). Greedy decoding fills T_i's
token t from the prediction at position m + t (the marker's for t = 0); inside a chunk attention is
causal, so the prediction for token t never depends on the placeholders after it. L forwards
decode a whole batch of chunks. A model that reads with the reading cursor
(``model.readback_cursor``; data/cursor.py) gets it at the marker and after each token it wrote,
computed from the text written so far and the image it is reading, as training gives it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.cursor import ReadingCursor
from ..data.packing import Segment, assemble_row
from ..data.renderer import Renderer, chunk_text
from ..models.attention import TokenLayout
from ..models.cursor import NONE
from ..models.vist2 import Vist2Batch
from .cer import CerCounter

# batch -> logits [seq, batch, vocab] over the whole vocabulary (gathered over TP ranks)
Forward = Callable[[Vist2Batch], torch.Tensor]


def held_out_chunks(indexed, L: int, count: int) -> List[np.ndarray]:
    """``count`` full chunks (L tokens, at chunk boundaries of their documents), spread evenly
    over every full chunk of the held-out documents (deterministic)."""
    where = [(d, s) for d in range(len(indexed)) for s in range(0, int(indexed.lengths[d]) - L + 1, L)]
    if not where or count <= 0:
        return []
    picks = np.linspace(0, len(where) - 1, min(count, len(where))).round().astype(int)
    return [np.asarray(indexed.tokens(*where[i], L), np.int64) for i in picks]


def readback_batch(chunks: Sequence[np.ndarray], renderer: Renderer, decode, L: int, m: int) -> Vist2Batch:
    """One read-back row per chunk: V_i, the marker, T_i; its labels the true text."""
    rows = [assemble_row([Segment(0, 0, len(c), (True,))], [c], L, m, L + m + 1, None, "interleaved")
            for c in chunks]

    def stack(key, dtype=None):
        return torch.from_numpy(np.stack([getattr(r, key) for r in rows]))
    layout = TokenLayout(doc=stack("doc"), chunk=stack("chunk"), kind=stack("kind"),
                         readback=stack("readback"), position=stack("position"))
    images = torch.from_numpy(np.stack([renderer.render_chunk(c, decode) for c in chunks]))
    return Vist2Batch(tokens=stack("tokens"), layout=layout, images=images, labels=stack("labels"),
                      loss_mask=stack("loss_mask"))


@torch.no_grad()
def greedy_readback(forward: Forward, batch: Vist2Batch, m: int, n: int, vocab: int,
                    cursor: Optional[ReadingCursor] = None, decode=None) -> torch.Tensor:
    """-> the greedily read tokens [batch, n] (placeholders in ``batch.tokens`` are overwritten).
    With ``cursor`` (and the tokenizer's ``decode``), the marker gets the cursor of the first
    character and text position t the cursor after the tokens read so far, on each row's image,
    once token t is read."""
    tokens = batch.tokens.clone()
    first = m + 1                        # text after V_i (m tokens) and the read-back marker
    tokens[:, first:first + n] = 0
    cells = None if cursor is None else torch.full_like(tokens, NONE)
    inked = None if cursor is None else [cursor.ink_map(image) for image in batch.images.cpu().numpy()]
    if cursor is not None:
        cells[:, m] = torch.tensor([cursor.at("", ink) for ink in inked], device=cells.device)
    for t in range(n):
        logits = forward(Vist2Batch(tokens, batch.layout, batch.images, batch.labels, batch.loss_mask, cursor=cells))
        tokens[:, first + t] = logits[m + t, :, :vocab].argmax(-1).to(tokens.device)
        if cursor is not None and t + 1 < n:
            read = tokens[:, first:first + t + 1].cpu().tolist()
            cells[:, first + t] = torch.tensor([cursor.at(chunk_text(decode(ids)), ink)
                                                for ids, ink in zip(read, inked)], device=cells.device)
    return tokens[:, first:first + n]


def font_size(renderer: Renderer, ids, decode) -> int:
    """The size the renderer chose for this chunk (fit mode shrinks long text)."""
    return int(renderer.layout(chunk_text(decode(list(ids))))[0].size)


def ocr_readback(forward: Forward, chunks: Sequence[np.ndarray], renderer: Renderer, tokenizer,
                 L: int, m: int, batch_size: int = 32, device="cpu", blind: bool = True,
                 cursor: Optional[ReadingCursor] = None) -> Dict:
    """CER and exact match overall and by font size over ``chunks`` (each of L tokens); and, with
    ``blind``, the same chunks read from another chunk's image (the images of a batch rotated by
    one): the score of a model that ignores its images (what the language prior alone reaches;
    with ``cursor``, the model's: ``ReadingCursor.of_model``, computed on the image it is given)."""
    overall, by_size, unread = CerCounter(), defaultdict(CerCounter), CerCounter()
    examples = []
    decode = tokenizer.decode
    for i in range(0, len(chunks), batch_size):
        part = chunks[i:i + batch_size]
        batch = readback_batch(part, renderer, decode, L, m).to(device)
        read = greedy_readback(forward, batch, m, L, tokenizer.vocab_size, cursor, decode).cpu().tolist()
        unseen = []
        if blind and len(part) > 1:
            other = Vist2Batch(batch.tokens, batch.layout, batch.images.roll(1, 0), batch.labels, batch.loss_mask)
            unseen = greedy_readback(forward, other, m, L, tokenizer.vocab_size, cursor, decode).cpu().tolist()
        for ids, out in zip(part, read):
            ref, hyp = chunk_text(decode(ids.tolist())), chunk_text(decode(out))
            overall.add(hyp, ref)
            by_size[font_size(renderer, ids, decode)].add(hyp, ref)
            if len(examples) < 3:
                examples.append({"reference": ref, "read_back": hyp})
        for ids, out in zip(part, unseen):
            unread.add(chunk_text(decode(out)), chunk_text(decode(ids.tolist())))
    return {**overall.summary(), "by_font_size": {str(k): v.summary() for k, v in sorted(by_size.items())},
            **({"blind": unread.summary()} if unread.chunks else {}), "examples": examples}
