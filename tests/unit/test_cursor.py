"""The reading cursor (docs/spec.md, "Reading cursor"; data/cursor.py, models/cursor.py).

References: the layout drawn plainly (Pillow measures every character; the next character with
ink after the text written so far, its pen mapped to the OCR grid's cells with Pillow's metrics),
training rows against greedy read-back by a perfect reader (the cursor training sees is the one
read-back computes while writing), a model without the cursor (the same weights; the cursor's
embeddings added by hand), the config checks' messages."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.cursor import ReadingCursor
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.renderer import ReferenceRenderer, load_font, normalize_text
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import ConfigError, RenderOverflowError
from megatron_vist2.metrics.readback import greedy_readback, readback_batch
from megatron_vist2.models import Vist2Model
from megatron_vist2.models.attention import TEXT
from megatron_vist2.models.cursor import NONE
from tests.conftest import tiny_overrides
from tests.unit.test_ocr_head import _metrics, _texts

# (preset, overrides): the two one-size geometries, and line spacing (the last line's passes the image's edge)
GEOMETRIES = [("tiny-cpu", ()), ("tiny-cpu-rho2", ()), ("tiny-cpu", ("model.render.line_spacing=2",))]
MORE = ["THE REMEDY IN EQUITY BY DIRECT ACTION; RIVERS AND HARBOR T Y + R", "a" * 31 + " b", "a" * 32 + "\n\nb", "end   ", "x\n", "  two leading", "full " * 7 + "\n" + "z"]


def _cfg(preset, data, *extra):
    return validate(load_config(preset, tiny_overrides(data, "model.readback_cursor=true", *extra)))


def _has_ink(font, ch):
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    draw.text((16, 16), ch, font=font, fill=0, anchor="la")
    return bool((np.asarray(image) < 255).any())


def _reference(cfg, text):
    """-> [cursor after text[:k] for k = 0 .. len(text)] and the image: every character's pen from
    the reference layout, the first character with ink at or after offset k, its cell."""
    r, o = cfg.model.render, cfg.model.ocr_head
    renderer = ReferenceRenderer.from_model_config(cfg.model)
    try:
        font, lines, line_height = renderer.layout(text)
    except RenderOverflowError:           # (line spacing: some edge texts no longer fit)
        return None, None, None
    if font.size != r.font_size:          # the cursor is defined for chunks drawn at font_size
        return None, None, None
    (cell_y, cell_x) = _metrics(r, r.min_font_size)
    text = normalize_text(text, r.tab_width)
    pens, pos = [], 0
    for i, line in enumerate(lines):
        x = 0
        for ch in line:
            pens.append((i, x))
            x += int(round(font.getlength(ch)))
        pos += len(line)
        if pos < len(text) and text[pos] == "\n":     # a newline: no ink, its own offset
            pens.append(None)
            pos += 1
    assert len(pens) == len(text)
    inked = [p is not None and _has_ink(font, ch) for p, ch in zip(pens, text)]
    out = []
    for k in range(len(text) + 1):
        nxt = next((j for j in range(k, len(text)) if inked[j]), None)
        if nxt is None:
            out.append(o.lines * o.columns)
        else:
            i, x = pens[nxt]
            out.append(min(i * line_height // cell_y, o.lines - 1) * o.columns + min(x // cell_x, o.columns - 1))
    return out, renderer.draw(font, lines, line_height), text


@pytest.mark.parametrize("preset, extra", GEOMETRIES)
def test_cursor_is_the_cell_of_the_next_drawn_character(tiny_data, preset, extra):
    cfg = _cfg(preset, tiny_data, *extra)
    cursor = ReadingCursor(cfg.model)
    assert cursor.unseen in ("", "`"), cursor.unseen    # at 7 pt the backtick's ink is where neighbours reach
    checked = 0
    for text in _texts(tiny_data, cfg) + MORE:
        want, image, norm = _reference(cfg, text)
        if want is None or set(norm) & set(cursor.unseen):
            continue
        inked = cursor.ink_map(image)
        got = [cursor.at(norm[:k], inked) for k in range(len(norm) + 1)]
        assert got == want, (text, [(k, g, w) for k, (g, w) in enumerate(zip(got, want)) if g != w][:5])
        checked += 1
    assert checked >= 20


def test_rows_carry_the_cursor_a_perfect_reader_gets_while_writing(tiny_data):
    """Training rows' cursor (from the true text and its image) = the cursor greedy read-back
    computes after each token it wrote, when what it writes is the true text."""
    cfg = _cfg("tiny-cpu", tiny_data, "data.readback_fraction=0.5")
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.valid_prefix, tok), tok, cfg, 7)
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    cursor = ReadingCursor(cfg.model)
    compared = 0
    for g in range(6):
        row = ds[g]
        text_rb = (row["kind"] == TEXT) & row["readback"]
        assert (row["cursor"][~text_rb] == NONE).all() and (row["cursor"][text_rb] >= 0).all()
        for d, c in sorted({(int(d), int(c)) for d, c in zip(row["doc"][text_rb], row["chunk"][text_rb])}):
            where = np.nonzero(text_rb & (row["doc"] == d) & (row["chunk"] == c))[0]
            ids = row["tokens"][where[1:]]                    # where[0]: the read-back marker
            if len(ids) < L:
                continue
            batch = readback_batch([ids], cursor.renderer, tok.decode, L, m)
            seen = []

            def perfect(b):          # writes the true text; records the cursor each forward got
                seen.append(b.cursor.clone())
                logits = torch.full((L + m + 1, 1, cfg.model.llm.vocab_size), -1.0)
                logits[torch.arange(L + m + 1), 0, b.labels[0]] = 1.0
                return logits
            read = greedy_readback(perfect, batch, m, L, cfg.model.llm.vocab_size, cursor, tok.decode)
            assert read[0].tolist() == ids.tolist()
            # the forward for token t sees the cursor of the marker and of text positions 0 .. t - 1
            for t in range(L):
                assert seen[t][0, m:m + t + 1].tolist() == row["cursor"][where][:t + 1].tolist()
                assert (seen[t][0, m + t + 1:] == NONE).all()
            compared += 1
    assert compared >= 3


def test_cursor_embeddings_are_added_at_cursor_positions_only(tiny_data):
    cfg = _cfg("tiny-cpu", tiny_data, "data.readback_fraction=0.5")
    plain_cfg = replace(cfg, model=replace(cfg.model, readback_cursor=False))
    tok = load_tokenizer(cfg.data.tokenizer)
    batch = collate([PackedVist2Dataset(open_indexed(cfg.data.valid_prefix, tok), tok, cfg, 7)[g] for g in range(2)])
    assert (batch.cursor >= 0).any()
    model, plain = Vist2Model(cfg).eval(), Vist2Model(plain_cfg).eval()
    mine = dict(model.named_parameters())
    assert all(torch.equal(p, mine[n]) for n, p in plain.named_parameters())   # the cursor is built last
    emb = model.front.cursor
    with torch.no_grad():
        emb.row.weight.normal_()
        emb.column.weight.normal_()
    cols = cfg.model.ocr_head.columns

    def add_by_hand(module, inputs, output):
        out = output.clone()
        for b, s in zip(*torch.nonzero(batch.cursor >= 0, as_tuple=True)):
            c = int(batch.cursor[b, s])
            out[b, s] += emb.row.weight[c // cols] + emb.column.weight[c % cols]
        return out
    with torch.no_grad():
        got = model(batch)
        none = model(replace(batch, cursor=torch.full_like(batch.cursor, NONE)))
        hook = plain.front.embedding.register_forward_hook(add_by_hand)
        want = plain(batch)
        hook.remove()
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(none, plain(batch), atol=1e-6)
        assert not torch.allclose(got, none, atol=1e-3)


def test_cursor_config_is_checked(tiny_data):
    with pytest.raises(ConfigError, match="model.render.wrap=char"):
        _cfg("tiny-cpu", tiny_data, "model.render.wrap=word")
    with pytest.raises(ConfigError, match="the 'text' control has none"):
        _cfg("tiny-cpu", tiny_data, "model.context=text")
    with pytest.raises(ConfigError, match="set model.ocr_head.lines and model.ocr_head.columns"):
        _cfg("tiny-cpu", tiny_data, "model.ocr_head.columns=0")


def test_cursor_needs_a_font_of_one_advance(tiny_data):
    cfg = _cfg("tiny-cpu", tiny_data, "model.render.font=noto-sans-cjk-sc", "model.render.font_size=9",
               "model.render.min_font_size=9", "model.render.mode=strict")
    with pytest.raises(ConfigError, match="needs a font with one advance"):
        ReadingCursor(cfg.model)
