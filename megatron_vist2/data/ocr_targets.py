"""Targets of the OCR head (models/ocr_head.py), from the renderer's own layout, and the stage-0
data: every chunk of the training split, rendered on the fly with its targets.

A chunk's targets are a ``lines x columns`` grid of class ids (``model.ocr_head``): cell
(i, j) holds the j-th character of the renderer's line i, and the cell after a line's last
character holds the one space or newline the wrap consumed there (none after a word broken at
the line width), so the non-empty cells read row by row are exactly the normalised text
(``normalize_text``). With a monospaced font (the default DejaVu Sans Mono) cell (i, j) is also
a place in the image: the glyph's pen starts at x = margin + j * advance, y = margin + i * line
height (tests/unit/test_ocr_head.py checks this against the rendered pixels). Class 0 is
"empty", 1 "unknown" (a character outside ``charset``), then the charset in its order.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config.schema import ModelConfig, OcrHeadConfig
from ..errors import ConfigError
from ..models.ocr_head import OcrBatch
from .indexed import IndexedDocs
from .renderer import Renderer, advance, chunk_text, load_font, normalize_text
from .tokenizer import Tokenizer


class Charset:
    """Characters <-> class ids of ``model.ocr_head.charset``."""

    def __init__(self, ocr: OcrHeadConfig):
        self.chars = ocr.charset
        self.index: Dict[str, int] = {ch: i + 2 for i, ch in enumerate(ocr.charset)}

    def encode(self, ch: str) -> int:
        return self.index.get(ch, OcrHeadConfig.UNKNOWN)

    def decode(self, classes: Sequence[int]) -> str:
        """Class ids of the cells, row by row -> text (empty cells skipped, unknown as U+FFFD)."""
        out = []
        for c in classes:
            if c >= 2:
                out.append(self.chars[c - 2])
            elif c == OcrHeadConfig.UNKNOWN:
                out.append("\ufffd")
        return "".join(out)


def line_cells(text: str, lines: List[str]) -> List[str]:
    """The renderer's ``lines`` of normalised ``text``, each with the separator its wrap consumed
    appended; their concatenation is ``text`` (anything else is a renderer bug: raised)."""
    out, pos = [], 0
    for line in lines:
        if text[pos:pos + len(line)] != line:
            raise AssertionError(f"renderer line {line!r} is not the text at {pos} ({text[pos:pos + 40]!r})")
        pos += len(line)
        if pos < len(text) and text[pos] in " \n":
            line, pos = line + text[pos], pos + 1
        out.append(line)
    if pos != len(text):
        raise AssertionError(f"renderer lines cover {pos} of {len(text)} characters")
    return out


def required_grid(m: ModelConfig) -> Tuple[int, int]:
    """(lines, columns) a grid needs so every text that renders fits it: the lines of the image
    and a line's characters (+ the consumed separator) at the smallest size fit mode may use
    (the narrowest glyph of the charset for a proportional font)."""
    r = m.render
    size = r.font_size if r.mode == "strict" else r.min_font_size
    font = load_font(r.font, size)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent + r.line_spacing
    lines = (m.chunk.image_height - 2 * r.margin + r.line_spacing) // line_height
    narrowest = min(max(1, advance(font, ch)) for ch in m.ocr_head.charset if ch != "\n")
    return lines, (m.chunk.image_width - 2 * r.margin) // narrowest + 1


def grid_problem(m: ModelConfig) -> Optional[str]:
    """None when model.ocr_head's grid holds every rendering, else what to set."""
    if not m.ocr_head.enabled:
        return None
    lines, columns = required_grid(m)
    o = m.ocr_head
    if o.lines >= lines and o.columns >= columns:
        return None
    return (f"model.ocr_head is {o.lines} lines x {o.columns} columns, but a {m.chunk.image_height} x "
            f"{m.chunk.image_width} image at font size {m.render.min_font_size} (model.render.min_font_size) "
            f"holds {lines} lines of up to {columns - 1} characters: set model.ocr_head.lines={lines} "
            f"model.ocr_head.columns={columns} (one more than a line's characters: the separator its wrap consumed)")


def grid_targets(cells: List[str], ocr: OcrHeadConfig, charset: Charset) -> np.ndarray:
    """Lines with their separators -> int64 [lines * columns] class ids (row-major)."""
    if len(cells) > ocr.lines or any(len(c) > ocr.columns for c in cells):
        raise ConfigError(f"a chunk renders as {len(cells)} lines of up to {max(map(len, cells))} cells, more "
                          f"than model.ocr_head's {ocr.lines} x {ocr.columns} grid: enlarge the grid "
                          f"(tools/inspect_data.py --ocr-grid prints what the geometry needs)")
    grid = np.full((ocr.lines, ocr.columns), OcrHeadConfig.EMPTY, np.int64)
    for i, cell in enumerate(cells):
        grid[i, :len(cell)] = [charset.encode(ch) for ch in cell]
    return grid.reshape(-1)


def render_with_targets(renderer: Renderer, text: str, ocr: OcrHeadConfig, charset: Charset
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """A chunk's text (as ``chunk_text`` gives it) -> (its image, its grid targets), from one layout."""
    font, lines, line_height = renderer.layout(text)
    cells = line_cells(normalize_text(text, renderer.cfg.tab_width), lines)
    return renderer.draw(font, lines, line_height), grid_targets(cells, ocr, charset)


class OcrChunkDataset(Dataset):
    """Stage 0's data (``train.objective=ocr``): every chunk of L tokens of the documents (at chunk
    boundaries; a document's last chunk may be shorter), rendered on the fly with its targets.
    Sample g is chunk ``perm_e[g % N]`` of epoch e = g // N (a permutation seeded by (seed, e)),
    so ``consumed_samples`` fixes a run's position in its data, as for PackedVist2Dataset."""

    def __init__(self, indexed: IndexedDocs, tokenizer: Tokenizer, cfg, seed: int):
        m = cfg.model
        self.indexed, self.tokenizer, self.seed, self.ocr = indexed, tokenizer, seed, m.ocr_head
        self.renderer = Renderer.from_model_config(m)
        self.charset = Charset(m.ocr_head)
        L = m.chunk.text_tokens
        self.chunks = np.array([(d, s, min(L, int(n) - s)) for d, n in enumerate(indexed.lengths)
                                for s in range(0, int(n), L)], np.int64).reshape(-1, 3)
        self._perm: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    def chunk_index(self, g: int) -> int:
        epoch, i = divmod(g, len(self.chunks))
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch, 0x0C2]).permutation(len(self.chunks))}
        return int(self._perm[epoch][i])

    def __getitem__(self, g: int) -> dict:
        d, s, n = self.chunks[self.chunk_index(g)]
        text = chunk_text(self.tokenizer.decode(self.indexed.tokens(int(d), int(s), int(n)).tolist()))
        image, targets = render_with_targets(self.renderer, text, self.ocr, self.charset)
        return {"image": image, "targets": targets}


def collate_ocr(samples: List[dict]) -> OcrBatch:
    return OcrBatch(images=torch.from_numpy(np.stack([s["image"] for s in samples])),
                    targets=torch.from_numpy(np.stack([s["targets"] for s in samples])))
