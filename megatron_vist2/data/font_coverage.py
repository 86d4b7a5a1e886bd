"""Characters the configured render font cannot draw (they render as the font's .notdef box, so
the model reads a box instead of the text): found once, reported once, with the fix.

A character has no glyph when its ink equals that of a code point no font maps (U+10FFFD, a
private-use character): FreeType draws .notdef for both. Whitespace has no ink and is skipped.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image, ImageDraw

from .renderer import load_font

CJK_FONT = "noto-sans-cjk-sc"          # the bundled Latin + CJK face (renderer.NAMED_FONTS)
_UNMAPPED = "\U0010fffd"


def _ink(font, ch: str) -> bytes:
    size = 4 * font.size
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    draw.text((font.size, font.size), ch, font=font, fill=0, anchor="la")
    return np.asarray(image).tobytes()


def missing_glyphs(font_name: str, size: int, texts: Iterable[str]) -> Counter:
    """Characters of ``texts`` (with their counts) that ``font_name`` draws as .notdef."""
    font = load_font(font_name, size)
    notdef = _ink(font, _UNMAPPED)
    counts = Counter(ch for t in texts for ch in t if not ch.isspace())
    missing = {ch for ch in counts if _ink(font, ch) == notdef}
    return Counter({ch: n for ch, n in counts.items() if ch in missing})


def warn_missing_glyphs(render, texts: Iterable[str], where: str, log: Callable[[str], None] = print
                        ) -> Optional[str]:
    """One warning naming how many characters of ``texts`` render as boxes, a few examples and
    the fix; -> the warning (None when the font draws everything)."""
    missing = missing_glyphs(render.font, render.font_size, texts)
    if not missing:
        return None
    examples = ", ".join(repr(ch) for ch, _ in missing.most_common(5))
    fix = ("set model.render.font=" + CJK_FONT + " (the bundled CJK font)" if render.font != CJK_FONT
           else "these characters are in no bundled font (emoji, rare scripts): set model.render.font "
                "to a font file that has them")
    text = (f"warning: {sum(missing.values())} characters ({len(missing)} distinct, e.g. {examples}) in "
            f"{where} have no glyph in model.render.font '{render.font}' and render as empty boxes; {fix}")
    log(text)
    return text
