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
