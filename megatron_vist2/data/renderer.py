"""Deterministic rendering of a chunk's text into a grayscale "sketch" image.

Contract (docs/spec.md, "Rendering"): dark text (0) on a light background (255) in a fixed
H x W uint8 image, one TrueType font at a fixed size, without anti-aliasing, so pixels are 0 or
255 and identical on every machine with the pinned Pillow (its wheel ships FreeType). Pillow's
BASIC layout engine is forced (RAQM shaping is used only where libraqm happens to load).

Text normalisation, before layout:
  - "\\r\\n" and "\\r" become "\\n"; "\\n" starts a new line;
  - "\\t" becomes ``tab_width`` spaces;
  - any other control / unassigned / surrogate character becomes U+FFFD (drawn as the font's
    replacement glyph; characters the font lacks draw as its .notdef box).
Layout, context-free so a character looks the same wherever it appears:
  - a character's advance is its whole-pixel advance in the font (BASIC layout: hinted, no
    kerning); a string's width is the sum of its characters' advances;
  - ``wrap="word"``: greedy word wrap at single spaces (runs of spaces, leading ones too, are
    kept; the space at a wrap is dropped); a word wider than a line is broken at the line width;
    ``wrap="char"``: each line takes characters while they fit, then breaks (spaces are drawn
    like any character, one at a break starts the next line);
  - line i's top is ``margin + i * (ascent + descent + line_spacing)``; each glyph is drawn on
    its own, anchored at its pen position (left, ascender line), and clipped to the image.
Strict mode raises ``RenderOverflowError`` if the lines do not fit; fit mode retries one point
smaller down to ``min_font_size`` and raises past that. Text is never silently truncated.
Legibility: a chunk drawn at a size whose glyph advance (the width of "0") is below
``min_legible_advance`` pixels cannot be read; the renderer warns once per process and size
(``IllegibleRenderWarning``), naming the size and what to change (compress with the image
geometry and the aligner's merge, not with smaller glyphs).

``ReferenceRenderer`` states this with one Pillow ``draw.text`` per glyph. ``Renderer`` (used
everywhere else) produces the same bytes from cached glyph and word bitmaps combined with a numpy
minimum; a test compares the two on a varied corpus (Latin, CJK, edge cases).
"""
from __future__ import annotations

import functools
import unicodedata
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config.schema import ModelConfig, RenderConfig
from ..errors import RenderOverflowError

FONT_DIR = Path(__file__).parent / "fonts"

# Named fonts: a file bundled here, or a face inside a font package (path, face index, variation).
NAMED_FONTS: Dict[str, Callable[[], Tuple[str, int, str]]] = {
    "noto-sans-cjk-sc": lambda: (str(files("manimgx_fonts_cjk") / "NotoSansCJK-VF.otf.ttc"), 2,
                                 "Regular"),
}


class IllegibleRenderWarning(UserWarning):
    """A chunk was drawn with glyphs too small to read (``model.render.min_legible_advance``)."""


_WARNED_SIZES: set = set()


def legibility_problem(render, size: int, height: int, width: int):
    """None when ``size`` draws glyphs at least ``render.min_legible_advance`` px wide, else the
    warning: the size, its advance, the smallest legible size and what to change."""
    limit = getattr(render, "min_legible_advance", 0)
    adv = advance(load_font(render.font, size), "0")
    if not limit or adv >= limit:
        return None
    legible = next((s for s in range(size + 1, 4 * size + 8) if advance(load_font(render.font, s), "0") >= limit),
                   None)
    return (f"a chunk renders at font size {size} (glyph advance {adv} px, below model.render."
            f"min_legible_advance={limit} px) in a {height} x {width} image: text that small cannot be "
            f"read. Compress with the image geometry instead of the glyphs: a larger image "
            f"(model.chunk.image_height / image_width) with a larger model.aligner.merge keeps the visual "
            f"tokens per chunk (e.g. 128 x 128 with merge 4 gives 4 tokens, as 64 x 64 with merge 2), or "
            f"fewer model.chunk.text_tokens; model.render.min_font_size={legible} stops with an error "
            f"instead of drawing illegible text")


def normalize_text(text: str, tab_width: int) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " " * tab_width)
    return "".join(ch if ch == "\n" or unicodedata.category(ch)[0] != "C" else "\ufffd"
                   for ch in text)


def chunk_text(decoded: str) -> str:
    """What a chunk's image shows, given its token ids decoded on their own (docs/spec.md,
    "Rendering"): a byte-level tokenizer can cut a multi-byte UTF-8 character at a chunk boundary,
    and decoding a chunk alone then yields U+FFFD for the cut bytes at its start or end. Those
    are dropped: a cut character is drawn in neither image (the earlier chunk is rendered before
    the later tokens exist, and half a character has no glyph); its tokens stay in the text."""
    return decoded.strip("\ufffd")


def font_source(name: str) -> Tuple[str, int, str]:
    """'DejaVuSansMono.ttf' (bundled), 'noto-sans-cjk-sc' (Latin + CJK) or an absolute path."""
    if name in NAMED_FONTS:
        return NAMED_FONTS[name]()
    path = Path(name)
    if not path.is_absolute():
        path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"render font '{name}' not found (looked for {path}); set "
                                f"model.render.font to a file in {FONT_DIR}, one of "
                                f"{sorted(NAMED_FONTS)}, or an absolute path")
    return str(path), 0, ""


@functools.lru_cache(maxsize=64)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path, index, variation = font_source(name)
    font = ImageFont.truetype(path, size, index=index, layout_engine=ImageFont.Layout.BASIC)
    if variation:
        font.set_variation_by_name(variation)   # variable fonts default to their thinnest style
    return font


def advance(font: ImageFont.FreeTypeFont, ch: str) -> int:
    """A character's whole-pixel advance (BASIC layout: hinted, no kerning)."""
    return int(round(font.getlength(ch)))


def wrap(text: str, max_width: int, width: Callable[[str], int]) -> List[str]:
    """Greedy wrap; ``width`` is additive (sum of advances). Over-long words break at the width."""
    lines: List[str] = []
    space = width(" ")
    for paragraph in text.split("\n"):
        line, line_w = None, 0                      # None: nothing on this line yet
        for word in paragraph.split(" "):
            word_w = width(word)
            new_w = word_w if line is None else line_w + space + word_w
            if new_w <= max_width:
                line, line_w = (word if line is None else f"{line} {word}"), new_w
                continue
            if line is not None:
                lines.append(line)
            while word_w > max_width:               # hard-break an over-long word
                cut, used = 0, 0
                while used + width(word[cut]) <= max_width:
                    used += width(word[cut])
                    cut += 1
                cut = max(cut, 1)                    # a glyph wider than a line still advances
                lines.append(word[:cut])
                word, word_w = word[cut:], word_w - width(word[:cut])
            line, line_w = word, word_w
        lines.append(line or "")
    return lines


def wrap_chars(text: str, max_width: int, width: Callable[[str], int]) -> List[str]:
    """Character wrap: a line takes characters while their advances fit ``max_width`` (at least
    one), then the next line starts; ``\n`` starts a new line and is not drawn."""
    lines: List[str] = []
    for paragraph in text.split("\n"):
        start, used = 0, 0
        for i, ch in enumerate(paragraph):
            w = width(ch)
            if used + w > max_width and i > start:
                lines.append(paragraph[start:i])
                start, used = i, 0
            used += w
        lines.append(paragraph[start:])
    return lines


WRAPS = {"word": wrap, "char": wrap_chars}         # model.render.wrap (config/schema.py's RenderWrap)


def line_height(render: RenderConfig, font: ImageFont.FreeTypeFont) -> int:
    """Pixels from one line's top to the next's: ascent + descent + ``line_spacing``."""
    ascent, descent = font.getmetrics()
    return ascent + descent + render.line_spacing


def lines_that_fit(render: RenderConfig, image_height: int, height: int) -> int:
    """How many lines ``height`` pixels apart fit an image ``image_height`` tall inside its
    margins (the last line needs no spacing below it)."""
    return (image_height - 2 * render.margin + render.line_spacing) // height


class ReferenceRenderer:
    """The contract, written plainly: Pillow measures and draws every line."""

    def __init__(self, render: RenderConfig, height: int, width: int):
        self.cfg, self.height, self.width = render, height, width
        font_source(render.font)                   # fail early on a missing font

    @classmethod
    def from_model_config(cls, cfg: ModelConfig):
        return cls(cfg.render, cfg.chunk.image_height, cfg.chunk.image_width)

    def measure(self, font: ImageFont.FreeTypeFont) -> Callable[[str], int]:
        return lambda text: sum(advance(font, ch) for ch in text)

    def layout(self, text: str):
        """-> (font, lines, line height) of the largest allowed size that fits, or raise."""
        text = normalize_text(text, self.cfg.tab_width)
        sizes = [self.cfg.font_size] if self.cfg.mode == "strict" else \
            range(self.cfg.font_size, self.cfg.min_font_size - 1, -1)
        inner_w = self.width - 2 * self.cfg.margin
        inner_h = self.height - 2 * self.cfg.margin
        lines = []
        for size in sizes:
            font = load_font(self.cfg.font, size)
            step = line_height(self.cfg, font)
            width = self.measure(font)
            max_lines = lines_that_fit(self.cfg, self.height, step)
            # Sound shortcut: n lines hold at most n * inner_w of text plus the n - 1 spaces
            # a word wrap drops (a character wrap drops none); more text than that cannot fit
            # at this size, so skip wrapping.
            if width(text.replace("\n", "")) > max_lines * inner_w + (max_lines - 1) * width(" "):
                continue
            lines = WRAPS[self.cfg.wrap](text, inner_w, width)
            if len(lines) * step - self.cfg.line_spacing <= inner_h:
                self._check_legible(size)
                return font, lines, step
        raise RenderOverflowError(
            f"text of {len(text)} characters does not fit a {self.height}x{self.width} image "
            f"at font size {size} ({self.cfg.mode} mode): use a "
            f"larger image, fewer model.chunk.text_tokens, or a smaller model.render.min_font_size")

    def _check_legible(self, size: int) -> None:
        """Warn once per process, font, size and image size when glyphs are too small to read."""
        key = (self.cfg.font, size, self.height, self.width)
        if key in _WARNED_SIZES:
            return
        _WARNED_SIZES.add(key)
        problem = legibility_problem(self.cfg, size, self.height, self.width)
        if problem:
            warnings.warn(problem, IllegibleRenderWarning, stacklevel=3)

    def draw(self, font, lines: List[str], line_height: int) -> np.ndarray:
        image = Image.new("L", (self.width, self.height), 255)
        draw = ImageDraw.Draw(image)
        draw.fontmode = "1"                                   # no anti-aliasing: binary pixels
        width = self.measure(font)
        for i, line in enumerate(lines):
            x, y = self.cfg.margin, self.cfg.margin + i * line_height
            for ch in line:
                draw.text((x, y), ch, font=font, fill=0, anchor="la")
                x += width(ch)
        return np.asarray(image, dtype=np.uint8)

    def render_chunk(self, ids, decode: Callable[[list], str]) -> np.ndarray:
        """A chunk's token ids -> its image: the one path training, the engine and the exported
        model all take (``decode`` is the tokenizer's ids -> text)."""
        return self.render(chunk_text(decode(ids)))

    def render(self, text: str) -> np.ndarray:
        """text -> uint8 [H, W]."""
        return self.draw(*self.layout(text))


class _GlyphCache:
    """Per (font, size): advances, and ink bitmaps of glyphs and of whole words (Zipf: a few
    thousand words cover most text), each with its offset from the pen position."""

    def __init__(self, font: ImageFont.FreeTypeFont, max_words: int = 50_000):
        self.font, self.max_words = font, max_words
        self.advance: Dict[str, int] = {}
        self.glyph: Dict[str, tuple] = {}
        self.word: Dict[str, tuple] = {}
        ascent, descent = font.getmetrics()
        self.pad = 2 * (ascent + descent)          # room for ink left of / above the pen

    def adv(self, ch: str) -> int:
        a = self.advance.get(ch)
        if a is None:
            a = self.advance[ch] = advance(self.font, ch)
        return a

    def width(self, text: str) -> int:
        return sum(self.adv(ch) for ch in text)

    def glyph_ink(self, ch: str) -> tuple:
        g = self.glyph.get(ch)
        if g is None:
            size = 3 * self.pad
            image = Image.new("L", (size, size), 255)
            draw = ImageDraw.Draw(image)
            draw.fontmode = "1"
            draw.text((self.pad, self.pad), ch, font=self.font, fill=0, anchor="la")
            g = self.glyph[ch] = _crop(np.asarray(image), self.pad, self.pad)
        return g

    def word_ink(self, word: str) -> tuple:
        """The word's glyphs combined into one bitmap (min is order-free, so this is exact)."""
        w = self.word.get(word)
        if w is None:
            inks, x = [], 0
            for ch in word:
                bmp, dx, dy = self.glyph_ink(ch)
                if bmp is not None:
                    inks.append((bmp, x + dx, dy))
                x += self.adv(ch)
            if not inks:
                w = (None, 0, 0)
            else:
                left = min(dx for _, dx, _ in inks)
                top = min(dy for _, _, dy in inks)
                right = max(dx + b.shape[1] for b, dx, _ in inks)
                bottom = max(dy + b.shape[0] for b, _, dy in inks)
                canvas = np.full((bottom - top, right - left), 255, np.uint8)
                for bmp, dx, dy in inks:
                    region = canvas[dy - top:dy - top + bmp.shape[0], dx - left:dx - left + bmp.shape[1]]
                    np.minimum(region, bmp, out=region)
                w = (canvas, left, top)
            if len(self.word) < self.max_words:
                self.word[word] = w
        return w


def _crop(a: np.ndarray, pen_x: int, pen_y: int) -> tuple:
    rows, cols = np.nonzero(a == 0)
    if rows.size == 0:
        return None, 0, 0
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return a[y0:y1, x0:x1].copy(), int(x0) - pen_x, int(y0) - pen_y


@functools.lru_cache(maxsize=64)
def _cache(name: str, size: int) -> _GlyphCache:
    return _GlyphCache(load_font(name, size))


def ink_columns(name: str, size: int, ch: str) -> List[int]:
    """The columns (pixels right of the pen; negative: left of it) where ``ch`` drawn alone at
    its pen has ink, in font ``name`` at ``size``; [] for a character without ink."""
    bmp, dx, _ = _cache(name, size).glyph_ink(ch)
    return [] if bmp is None else [dx + k for k in range(bmp.shape[1]) if (bmp[:, k] < 255).any()]


class Renderer(ReferenceRenderer):
    """Same bytes as ReferenceRenderer, from cached word bitmaps blitted with a numpy minimum."""

    def measure(self, font):
        return _cache(self.cfg.font, font.size).width

    def draw(self, font, lines: List[str], line_height: int) -> np.ndarray:
        cache = _cache(self.cfg.font, font.size)
        image = np.full((self.height, self.width), 255, np.uint8)
        H, W = image.shape
        space = cache.adv(" ")
        for i, line in enumerate(lines):
            x, y = self.cfg.margin, self.cfg.margin + i * line_height
            for word in line.split(" "):
                bmp, dx, dy = cache.word_ink(word)
                if bmp is not None:
                    top, left = y + dy, x + dx
                    t, l = max(top, 0), max(left, 0)
                    b, r = min(top + bmp.shape[0], H), min(left + bmp.shape[1], W)
                    if b > t and r > l:
                        region = image[t:b, l:r]
                        np.minimum(region, bmp[t - top:b - top, l - left:r - left], out=region)
                x += cache.width(word) + space
        return image
