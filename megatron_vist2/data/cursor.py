"""The reading cursor (docs/spec.md, "Reading cursor"): where in a read-back chunk's image the
next character is drawn, given the text written so far. An input of the decoder at read-back
text positions (``model.readback_cursor``; models/cursor.py), so a read-back target depends on a
place in the image that the model is told, not on one it has to find: measured in the research
harness, greedy read-back 75.0 % against 16.6 % blind with it, 25.8 % against 19.2 % without
(docs/fidelity.md, "A cursor computable while writing").

Definition. Text position j of a read-back chunk (input token j, whose output predicts token
j + 1; its read-back marker, which predicts token 0, counts as j = -1: nothing written) carries
the cell of the OCR grid (data/ocr_targets.py: ``model.ocr_head.lines x
columns`` cells of ``cell_size``) of the first place with ink at or after the pen that follows
the text of tokens 0..j: the pen where a next character would be drawn (the character wrap puts
it on the next line when it no longer fits), then moved one advance at a time, line by line,
past places with no ink in their own columns of the chunk's image (the line height x the
columns of the advance that no neighbouring glyph of the charset reaches into: at 7 pt with
4-px advances a capital R reaches two pixels past its advance). Blank places are spaces, the
rest of a line after a newline, and the end of the text; when no ink is left the cell is ``END``
(= lines x columns). Other positions carry ``NONE`` (models/cursor.py). A character whose ink
lies only in columns its neighbours reach (at 7 pt: the backtick) counts as blank
(``ReadingCursor.unseen``).

It is computable while writing: it needs the text written so far and the image, nothing of the
text still to come, so greedy read-back (metrics/readback.py) computes it after each token exactly
as training does. That holds for ``model.render.wrap=char`` (a written character never moves) with
a font of one advance (the renderer's fonts are monospaced), for a chunk drawn at
``model.render.font_size`` (strict mode, or fit mode where the text fits at that size:
``tools/inspect_data.py --check-render`` counts the chunks that do not). Config checks:
config/validate.py. tests/unit/test_cursor.py compares it with the cells of the rendered
characters themselves.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..config.schema import ModelConfig
from ..errors import ConfigError
from .ocr_targets import cell_size
from .renderer import WRAPS, Renderer, chunk_text, ink_columns, line_height, lines_that_fit, load_font, normalize_text



class ReadingCursor:
    """The cursor of one model's geometry (``model.render``, ``model.chunk``, ``model.ocr_head``)."""

    PROBE = "0"          # a character with ink, written after the text to find the next pen

    def __init__(self, m: ModelConfig):
        r = m.render
        self.renderer = Renderer.from_model_config(m)
        self.font = load_font(r.font, r.font_size)
        self.line_height = line_height(r, self.font)
        self.width = self.renderer.measure(self.font)
        self.advance = self.width(self.PROBE)
        other = sorted({ch for ch in m.ocr_head.charset if ch != "\n" and self.width(ch) != self.advance})
        if other:
            raise ConfigError(f"model.readback_cursor needs a font with one advance (a monospaced model.render.font): "
                              f"in {r.font!r} at {r.font_size} pt {other[:5]!r} are not {self.advance} px wide like "
                              f"{self.PROBE!r}; use a monospaced font or model.readback_cursor=false")
        self.margin, self.tab_width = r.margin, r.tab_width
        self.inner_w = m.chunk.image_width - 2 * r.margin
        self.lines_drawn = lines_that_fit(r, m.chunk.image_height, self.line_height)
        inks = {ch: ink_columns(r.font, r.font_size, ch) for ch in m.ocr_head.charset + "\ufffd" if ch != "\n"}
        a = self.advance
        reach = {x - a for xs in inks.values() for x in xs if x >= a} | {x + a for xs in inks.values() for x in xs if x < 0}
        self.own_columns = [k for k in range(a) if k not in reach]
        self.unseen = "".join(ch for ch, xs in inks.items() if xs and not set(xs) & set(self.own_columns))
        self.cell = cell_size(m)
        self.grid = (m.ocr_head.lines, m.ocr_head.columns)
        self.END = self.grid[0] * self.grid[1]
        self.region, self.regions = m.visual_token_side, m.visual_token_grid

    @classmethod
    def of_model(cls, m: ModelConfig) -> Optional["ReadingCursor"]:
        """The cursor a model reads with (``model.readback_cursor``, a VIST2 model), else None."""
        return cls(m) if m.readback_cursor and m.context == "vist2" else None

    def pen(self, written: str):
        """(line, x) where the character after normalised ``written`` would be drawn."""
        lines = WRAPS["char"](written + self.PROBE, self.inner_w, self.width)
        return len(lines) - 1, self.width(lines[-1]) - self.advance

    def ink_map(self, image: np.ndarray) -> np.ndarray:
        """bool [lines drawn, places per line]: ink in place (line, x = place x advance)'s own
        columns (every place of a line in one numpy step; the font has one advance)."""
        lines, places = self.lines_drawn, self.inner_w // self.advance
        m, a = self.margin, self.advance
        short = m + lines * self.line_height - image.shape[0]    # the last line's spacing may pass the edge
        if short > 0:
            image = np.pad(image, ((0, short), (0, 0)), constant_values=255)
        box = image[m:m + lines * self.line_height, m:m + places * a].reshape(lines, self.line_height, places, a)
        return (box[:, :, :, self.own_columns] < 255).any(axis=(1, 3))

    def at(self, written: str, inked: np.ndarray) -> int:
        """The cursor after ``written`` (text as ``chunk_text`` gives it) on the image whose
        ``ink_map`` is ``inked``: a cell id (row x columns + column), or ``END``."""
        return self._from(*self.pen(normalize_text(written, self.tab_width)), inked)

    def _from(self, line: int, x: int, inked: np.ndarray) -> int:
        """The cell of the first place with ink (``ink_map``) at or after the pen (line, x), or ``END``."""
        while line < self.lines_drawn:
            if x + self.advance > self.inner_w:
                line, x = line + 1, 0
                continue
            if inked[line, x // self.advance]:
                row, col = line * self.line_height // self.cell[0], x // self.cell[1]
                return min(row, self.grid[0] - 1) * self.grid[1] + min(col, self.grid[1] - 1)
            x += self.advance
        return self.END

    def visual_token(self, cell: int) -> int:
        """The index, within its image's visual tokens, of the token whose region holds the centre
        of ``cell`` (a cell id, as ``at`` gives it); -1 for ``END``."""
        if cell == self.END:
            return -1
        (row, col), (h, w) = divmod(cell, self.grid[1]), self.cell
        y, x = self.margin + row * h + h // 2, self.margin + col * w + w // 2
        return min(y // self.region, self.regions[0] - 1) * self.regions[1] + min(x // self.region, self.regions[1] - 1)

    def of_chunk(self, ids: Sequence[int], image: np.ndarray, decode: Callable[[list], str]) -> np.ndarray:
        """int64 [len(ids) + 1]: the cursor at each text position of a read-back chunk, on the
        chunk's ``image``: at its read-back marker (nothing written yet: the first character's
        cell), then after tokens 0..j for each j."""
        ids = [int(i) for i in ids]
        written = [""] + [chunk_text(decode(ids[:j + 1])) for j in range(len(ids))]
        whole = normalize_text(written[-1], self.tab_width)
        pens, inked = self._pens(whole), self.ink_map(image)
        out = []
        for text in written:
            # one layout of the whole text gives every pen (a written character never moves); a
            # prefix the whole text does not start with (a cut multi-byte character; a tab or
            # carriage return, which normalising changes) is laid out alone
            plain = whole.startswith(text) and "\t" not in text and "\r" not in text
            pen = pens[len(text)] if plain else self.pen(normalize_text(text, self.tab_width))
            out.append(self._from(*pen, inked))
        return np.array(out, np.int64)

    def _pens(self, text: str):
        """[pen after text[:k] for k = 0 .. len(text)], from one layout of ``text`` (= ``pen``)."""
        lines = WRAPS["char"](text + self.PROBE, self.inner_w, self.width)
        pens, k = [], 0
        for i, line in enumerate(lines):
            x = 0
            for ch in line:
                pens.append((i, x))           # the place of character k is the pen after text[:k]
                x += self.width(ch)
                k += 1
            if k < len(text) and text[k] == "\n":
                pens.append(self.pen(text[:k]))   # before a newline: where one more character would go
                k += 1
        return pens
