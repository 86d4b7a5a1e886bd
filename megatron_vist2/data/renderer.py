"""Deterministic rendering of a chunk's text into a grayscale "sketch" image.

Contract (docs/spec.md, "Rendering"): dark text (0) on a light background (255) in a fixed
H x W uint8 image, one bundled TrueType font at a fixed size, drawn without anti-aliasing so
pixels are 0 or 255 and identical on every machine with the pinned Pillow (its wheel ships
FreeType). Text normalisation, applied before layout:
  - "\\r\\n" and "\\r" become "\\n"; "\\n" starts a new line;
  - "\\t" becomes ``tab_width`` spaces;
  - any other control / unassigned / surrogate character becomes U+FFFD (drawn as the
    font's replacement glyph);
Layout: greedy word wrap at spaces; a word wider than a line is broken at the line width;
trailing spaces at a wrap are dropped. Strict mode raises ``RenderOverflowError`` if the
text does not fit; fit mode retries one point smaller down to ``min_font_size`` and raises
past that. Text is never silently truncated.
"""
from __future__ import annotations

import functools
import unicodedata
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config.schema import ModelConfig, RenderConfig
from ..errors import RenderOverflowError

FONT_DIR = Path(__file__).parent / "fonts"


def normalize_text(text: str, tab_width: int) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " " * tab_width)
    return "".join(ch if ch == "\n" or unicodedata.category(ch)[0] != "C" else "\ufffd"
                   for ch in text)


def font_path(name: str) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"render font '{name}' not found (looked for {path}); set "
                                f"model.render.font to a file in {FONT_DIR} or an absolute path")
    return path


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def wrap(text: str, max_width: float, measure) -> List[str]:
    """Greedy wrap by measured width; words longer than a line are split at the width."""
    lines: List[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = word if not line else f"{line} {word}"
            if measure(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while measure(word) > max_width:            # hard-break an over-long word
                cut = max(1, next(i for i in range(1, len(word) + 1)
                                  if measure(word[:i]) > max_width) - 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


class Renderer:
    def __init__(self, render: RenderConfig, height: int, width: int):
        self.cfg, self.height, self.width = render, height, width
        self.font_file = str(font_path(render.font))

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> "Renderer":
        return cls(cfg.render, cfg.chunk.image_height, cfg.chunk.image_width)

    def _layout(self, text: str, size: int):
        font = _font(self.font_file, size)
        ascent, descent = font.getmetrics()
        line_height = ascent + descent + self.cfg.line_spacing
        inner_w = self.width - 2 * self.cfg.margin
        inner_h = self.height - 2 * self.cfg.margin
        lines = wrap(text, inner_w, font.getlength)
        fits = len(lines) * line_height - self.cfg.line_spacing <= inner_h
        return font, lines, line_height, fits

    def render(self, text: str) -> np.ndarray:
        """text -> uint8 [H, W]."""
        text = normalize_text(text, self.cfg.tab_width)
        sizes = [self.cfg.font_size] if self.cfg.mode == "strict" else \
            range(self.cfg.font_size, self.cfg.min_font_size - 1, -1)
        for size in sizes:
            font, lines, line_height, fits = self._layout(text, size)
            if fits:
                break
        else:
            raise RenderOverflowError(
                f"text of {len(text)} characters does not fit a {self.height}x{self.width} image "
                f"at font size {size} ({self.cfg.mode} mode, {len(lines)} lines needed): use a "
                f"larger image, fewer model.chunk.text_tokens, or a smaller model.render.min_font_size")
        image = Image.new("L", (self.width, self.height), 255)
        draw = ImageDraw.Draw(image)
        draw.fontmode = "1"                                   # no anti-aliasing: binary pixels
        for i, line in enumerate(lines):
            draw.text((self.cfg.margin, self.cfg.margin + i * line_height), line, font=font, fill=0)
        return np.asarray(image, dtype=np.uint8)
