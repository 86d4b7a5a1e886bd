"""Targets of the OCR head (models/ocr_head.py), from the renderer's own layout, and the stage-0
data: every chunk of the training split, rendered on the fly with its targets.

A chunk's targets are a ``lines x columns`` grid of class ids (``model.ocr_head``) laid over
the image: a cell is one line height x one glyph advance at the smallest size fit mode may use
(``cell_size``), so a cell is a fixed place in the image whatever size the renderer chose. Each
character of the renderer's layout goes to the cell holding its pen position (line i's top
i x line height, the advance of the characters before it on the line; both relative to the
margin), and the one space or newline a line's wrap consumed goes where the pen stands after the
line's last character (none after a word broken at the line width). Larger sizes leave cells
between characters empty; no two characters share a cell (their advances are at least a cell
wide). The non-empty cells read row by row are exactly the normalised text (``normalize_text``);
tests/unit/test_ocr_head.py rebuilds the rendered pixels from the cells. Class 0 is "empty",
1 "unknown" (a character outside ``charset``), then the charset in its order. (Cells indexed by
the character's line and place in the line instead sit at different places for different font
sizes: measured slower to learn, docs/fidelity.md, "Stage 0".)
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config.schema import ModelConfig, OcrHeadConfig
from ..errors import ConfigError
from ..models.ocr_head import OcrBatch
from .indexed import IndexedDocs
from .renderer import Renderer, advance, chunk_text, line_height, lines_that_fit, load_font, normalize_text
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


def line_cells(text: str, lines: List[str], wrap: str) -> List[str]:
    """The renderer's ``lines`` of normalised ``text``, each with the separator its wrap consumed
    appended (a newline; with ``wrap="word"`` also the space at a wrap; ``wrap``: the renderer's
    ``model.render.wrap``); their concatenation is ``text`` (anything else is a renderer bug: raised)."""
    separators = " \n" if wrap == "word" else "\n"
    out, pos = [], 0
    for line in lines:
        if text[pos:pos + len(line)] != line:
            raise AssertionError(f"renderer line {line!r} is not the text at {pos} ({text[pos:pos + 40]!r})")
        pos += len(line)
        if pos < len(text) and text[pos] in separators:
            line, pos = line + text[pos], pos + 1
        out.append(line)
    if pos != len(text):
        raise AssertionError(f"renderer lines cover {pos} of {len(text)} characters")
    return out


def cell_size(m: ModelConfig) -> Tuple[int, int]:
    """(height, width) of a grid cell in pixels: the line height and the narrowest advance of the
    charset at the smallest size fit mode may use."""
    r = m.render
    font = load_font(r.font, r.font_size if r.mode == "strict" else r.min_font_size)
    return line_height(r, font), min(max(1, advance(font, ch)) for ch in m.ocr_head.charset if ch != "\n")


def required_grid(m: ModelConfig) -> Tuple[int, int]:
    """(lines, columns) a grid needs so every text that renders fits it: the image in cells, plus
    a column for the separator after a full line."""
    r, (height, width) = m.render, cell_size(m)
    return (lines_that_fit(r, m.chunk.image_height, height),
            (m.chunk.image_width - 2 * r.margin) // width + 1)


def grid_problem(m: ModelConfig) -> Optional[str]:
    """None when model.ocr_head's grid holds every rendering (for the head, or for the reading
    cursor's cells), else what to set."""
    if not (m.ocr_head.enabled or m.readback_cursor):
        return None
    lines, columns = required_grid(m)
    o = m.ocr_head
    if o.lines >= lines and o.columns >= columns:
        return None
    return (f"model.ocr_head is {o.lines} lines x {o.columns} columns, but a {m.chunk.image_height} x "
            f"{m.chunk.image_width} image at font size {m.render.min_font_size} (model.render.min_font_size) "
            f"holds {lines} lines of up to {columns - 1} characters: set model.ocr_head.lines={lines} "
            f"model.ocr_head.columns={columns} (one more than a line's characters: the separator its wrap consumed)")


def grid_targets(cells: List[str], line_height: int, width: Callable[[str], int], cell: Tuple[int, int],
                 ocr: OcrHeadConfig, charset: Charset) -> np.ndarray:
    """Lines with their separators, drawn ``line_height`` apart with advances ``width(ch)``, on
    cells of ``cell`` = (height, width) pixels -> int64 [lines * columns] class ids (row-major)."""
    grid = np.full((ocr.lines, ocr.columns), OcrHeadConfig.EMPTY, np.int64)
    for i, line in enumerate(cells):
        row, x = i * line_height // cell[0], 0
        for ch in line:
            col = x // cell[1]
            while col < ocr.columns and row < ocr.lines and grid[row, col] != OcrHeadConfig.EMPTY:
                col += 1                       # a zero-width character (never in the default charset)
            if row >= ocr.lines or col >= ocr.columns:
                raise ConfigError(f"a chunk's layout reaches cell ({row}, {col}) of model.ocr_head's {ocr.lines} x "
                                  f"{ocr.columns} grid: enlarge the grid (tools/inspect_data.py --ocr-grid "
                                  f"prints what the geometry needs)")
            grid[row, col] = charset.encode(ch)
            x += width(ch)
    return grid.reshape(-1)


def render_with_targets(renderer: Renderer, text: str, ocr: OcrHeadConfig, charset: Charset,
                        cell: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A chunk's text (as ``chunk_text`` gives it) -> (its image, its grid targets), from one
    layout; ``cell``: ``cell_size`` of the model."""
    font, lines, line_height = renderer.layout(text)
    cells = line_cells(normalize_text(text, renderer.cfg.tab_width), lines, renderer.cfg.wrap)
    return (renderer.draw(font, lines, line_height),
            grid_targets(cells, line_height, renderer.measure(font), cell, ocr, charset))


class OcrChunkDataset(Dataset):
    """Stage 0's data (``train.objective=ocr``): every chunk of L tokens of the documents (at chunk
    boundaries; a document's last chunk may be shorter), rendered on the fly with its targets.
    Sample g is chunk ``perm_e[g % N]`` of epoch e = g // N (a permutation seeded by (seed, e)),
    so ``consumed_samples`` fixes a run's position in its data, as for PackedVist2Dataset."""

    def __init__(self, indexed: IndexedDocs, tokenizer: Tokenizer, cfg, seed: int):
        m = cfg.model
        self.indexed, self.tokenizer, self.seed, self.ocr = indexed, tokenizer, seed, m.ocr_head
        self.renderer = Renderer.from_model_config(m)
        self.charset, self.cell = Charset(m.ocr_head), cell_size(m)
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
        image, targets = render_with_targets(self.renderer, text, self.ocr, self.charset, self.cell)
        return {"image": image, "targets": targets}


def collate_ocr(samples: List[dict]) -> OcrBatch:
    return OcrBatch(images=torch.from_numpy(np.stack([s["image"] for s in samples])),
                    targets=torch.from_numpy(np.stack([s["targets"] for s in samples])))
