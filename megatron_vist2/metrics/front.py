"""Held-out accuracy of the front alone: the OCR head (models/ocr_head.py) reads each chunk's
image through the ViT and the aligner, with no LLM; its cells, read row by row, are compared with
the text the image shows (``normalize_text`` of the chunk's text, what the renderer drew) by
character error rate (metrics/cer.py), overall and by the font size the renderer chose. The
blind score reads the same chunks from each other's images (the batch's images rotated by one):
what the head gets without reading, from the statistics of text alone.

Used by the trainer at each evaluation (``train.ocr_head_eval_chunks``) and callable on any model
with an OCR head: ``front_readback(lambda images: model.front.read(images), chunks, ...)``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config.schema import OcrHeadConfig
from ..data.ocr_targets import Charset, render_with_targets
from ..data.renderer import Renderer, chunk_text, normalize_text
from .cer import CerCounter

# uint8 images [n, H, W] -> the OCR head's cell logits [n, cells, classes]
Read = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def front_readback(read: Read, chunks: Sequence[np.ndarray], renderer: Renderer, tokenizer,
                   ocr: OcrHeadConfig, batch_size: int = 64, device="cpu", blind: bool = True) -> Dict:
    """-> {cer, char_accuracy, exact_match, chunks, chars, loss (mean cross-entropy per cell),
    by_font_size, blind (with ``blind``), examples} over ``chunks`` (token ids, e.g.
    ``metrics.readback.held_out_chunks``)."""
    charset = Charset(ocr)
    overall, by_size, unread = CerCounter(), defaultdict(CerCounter), CerCounter()
    loss, cells, examples = 0.0, 0, []
    for i in range(0, len(chunks), batch_size):
        texts = [chunk_text(tokenizer.decode(np.asarray(c).tolist())) for c in chunks[i:i + batch_size]]
        rendered = [render_with_targets(renderer, t, ocr, charset) for t in texts]
        images = torch.from_numpy(np.stack([image for image, _ in rendered])).to(device)
        targets = torch.from_numpy(np.stack([t for _, t in rendered])).to(device)
        logits = read(images)
        loss += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        cells += targets.numel()
        refs = [normalize_text(t, renderer.cfg.tab_width) for t in texts]
        for text, ref, row in zip(texts, refs, logits.argmax(-1).tolist()):
            hyp = charset.decode(row)
            overall.add(hyp, ref)
            by_size[int(renderer.layout(text)[0].size)].add(hyp, ref)
            if len(examples) < 3:
                examples.append({"reference": ref, "read": hyp})
        if blind and len(texts) > 1:
            for ref, row in zip(refs, read(images.roll(1, 0)).argmax(-1).tolist()):
                unread.add(charset.decode(row), ref)
    return {**overall.summary(), "loss": loss / max(cells, 1),
            "by_font_size": {str(k): v.summary() for k, v in sorted(by_size.items())},
            **({"blind": unread.summary()} if unread.chunks else {}), "examples": examples}
