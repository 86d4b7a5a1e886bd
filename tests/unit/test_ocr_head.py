"""The OCR head of stage 0 (models/ocr_head.py, data/ocr_targets.py, metrics/front.py) and the
renderer's legibility rule.

References: the rendered pixels (each target cell's character, drawn alone by Pillow at the pen
position its cell gives, rebuilds the image exactly; every cell that names a glyph lies on that
glyph's ink), the chunk's own text (the cells read row by row), a plain PyTorch loop (the
front-only step), the export's name table (the head is not exported)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from megatron_vist2.config import load_config, validate
from megatron_vist2.config.schema import OcrHeadConfig
from megatron_vist2.data import renderer as renderer_module
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.ocr_targets import Charset, cell_size, grid_problem, render_with_targets, required_grid
from megatron_vist2.data.renderer import IllegibleRenderWarning, Renderer, chunk_text, load_font, normalize_text
from megatron_vist2.data.tokenizer import load_tokenizer
from tests.conftest import tiny_overrides

PRESETS = ("tiny-cpu", "tiny-cpu-rho2", "tiny-cpu-rho8")
EDGE = ["", "\n", "a\n\nb", "word " * 40, "x" * 150, "a  b   c" * 9, "\tTab\r\nand CR\rend.",
        "Mr. Speaker, Mr. President, distinguished Members of the Congress, honored guests, and fellow "
        "citizens: (1) {braces} [brackets] 100% ~tilde~ `back` #hash | pipe ^caret",
        "The State of the Union\n" * 6, "line\n" * 7 + "end", "i" * 40 + " " + "W" * 40, " leading and trailing "]


def _cfg(preset, data, *extra):
    return validate(load_config(preset, tiny_overrides(data, "model.ocr_head.enabled=true", *extra)))


def _texts(data, cfg, count=24):
    tok = load_tokenizer(cfg.data.tokenizer)
    docs = open_indexed(cfg.data.valid_prefix, tok)
    L = cfg.model.chunk.text_tokens
    chunks = [chunk_text(tok.decode(docs.tokens(d, s, L).tolist()))
              for d in range(len(docs)) for s in range(0, int(docs.lengths[d]) - L, 7 * L)]
    return chunks[:count] + EDGE


def _metrics(render, size):
    """(line height, advance) of the monospaced font at ``size``, from Pillow."""
    font = load_font(render.font, size)
    ascent, descent = font.getmetrics()
    return ascent + descent + render.line_spacing, int(font.getlength("0"))


def _redraw(cfg, size, targets, charset):
    """The image a grid describes: cells are a line height x an advance at min_font_size; the
    character of cell (row, col) is the glyph of the line i and place j whose pen (i x line
    height, j x advance at ``size``) falls in that cell; each is drawn alone by Pillow there."""
    r, ch, o = cfg.model.render, cfg.model.chunk, cfg.model.ocr_head
    font = load_font(r.font, size)
    (step_y, step_x), (cell_y, cell_x) = _metrics(r, size), _metrics(r, r.min_font_size)
    line_of = {i * step_y // cell_y: i for i in range(o.lines)}
    place_of = {j * step_x // cell_x: j for j in range(2 * o.columns)}
    image = Image.new("L", (ch.image_width, ch.image_height), 255)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    grid = targets.reshape(o.lines, o.columns)
    for (row, col), c in np.ndenumerate(grid):
        if c >= 2:
            draw.text((r.margin + place_of[col] * step_x, r.margin + line_of[row] * step_y), charset.chars[c - 2],
                      font=font, fill=0, anchor="la")
    return np.asarray(image)


@pytest.mark.parametrize("preset", PRESETS)
def test_targets_rebuild_the_rendered_pixels(tiny_data, preset):
    """Every target cell's character, drawn where its cell puts its pen, rebuilds the rendered
    image exactly (nothing drawn that no cell names, no cell whose glyph is elsewhere); every cell
    naming a visible character lies on ink of the image (a cell is a fixed place in the image at
    every font size); and the cells read row by row are the chunk's (normalised) text."""
    cfg = _cfg(preset, tiny_data)
    m, o = cfg.model, cfg.model.ocr_head
    renderer, charset, cell = Renderer.from_model_config(m), Charset(o), cell_size(m)
    assert cell == _metrics(m.render, m.render.min_font_size)
    sizes = set()
    for text in _texts(tiny_data, cfg):
        image, targets = render_with_targets(renderer, text, o, charset, cell)
        size = renderer.layout(text)[0].size
        sizes.add(size)
        np.testing.assert_array_equal(_redraw(cfg, size, targets, charset), image, err_msg=repr(text[:60]))
        assert charset.decode(targets.tolist()) == normalize_text(text, m.render.tab_width)
        ink, (glyph_h, glyph_w) = image == 0, _metrics(m.render, size)
        for (row, col), c in np.ndenumerate(targets.reshape(o.lines, o.columns)):
            if c >= 2 and not charset.chars[c - 2].isspace():     # its pen is in the cell: ink within a glyph box
                y, x = m.render.margin + row * cell[0], m.render.margin + col * cell[1]
                assert ink[y:y + cell[0] + glyph_h, x:x + cell[1] + glyph_w].any(), (text[:40], row, col)
    if m.render.min_font_size < m.render.font_size:
        assert len(sizes) >= 2                 # fit mode chose several sizes among these texts
    else:
        assert sizes == {m.render.font_size}   # one size (tiny-cpu-rho2 / rho8)


def test_other_characters_are_unknown_and_the_grid_is_checked(tiny_data):
    cfg = _cfg("tiny-cpu", tiny_data)
    renderer, charset = Renderer.from_model_config(cfg.model), Charset(cfg.model.ocr_head)
    cell = cell_size(cfg.model)
    _, targets = render_with_targets(renderer, "caf\u00e9 \u2014 ok", cfg.model.ocr_head, charset, cell)
    assert charset.decode(targets.tolist()) == "caf\ufffd \ufffd ok"
    assert (targets == OcrHeadConfig.UNKNOWN).sum() == 2
    assert cell == (8, 4) and required_grid(cfg.model) == (8, 33)     # 64 x 128, margin 0, 6 pt
    small = _cfg("tiny-cpu", tiny_data, "model.ocr_head.lines=7")
    assert "model.ocr_head.lines=8 model.ocr_head.columns=33" in grid_problem(small.model)
    with pytest.raises(Exception, match="model.ocr_head"):
        render_with_targets(Renderer.from_model_config(small.model), "a\n" * 7 + "a", small.model.ocr_head, charset,
                            cell)


def test_front_only_step_equals_a_plain_loop(tiny_data, dist_env):
    """train_step_front (DeepSpeed engine, ZeRO-1, 2 micro-batches) equals plain PyTorch AdamW on
    the mean cross-entropy over the global batch's cells; only the front and the head move."""
    from megatron_vist2.data.ocr_targets import OcrChunkDataset, collate_ocr
    from megatron_vist2.models import Vist2Model
    from megatron_vist2.training.trainer import build_model, make_engine, make_schedule, train_step_front
    cfg = _cfg("tiny-cpu", tiny_data, "train.objective=ocr", "parallel.micro_batch_size=3",
               "parallel.global_batch_size=6", "optim.grad_clip=0.0", "optim.warmup_steps=0",
               "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.eps=1e-6", "parallel.zero_stage=1")
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = OcrChunkDataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
    batches = [[collate_ocr([ds[i] for i in range(s, s + 3)]) for s in (6 * k, 6 * k + 3)] for k in range(2)]
    engine = make_engine(cfg, dist_env, build_model(cfg, dist_env))
    schedule = make_schedule(cfg, dist_env, engine)
    got = [train_step_front(schedule, micro, 2, 1) for micro in batches]

    ref = Vist2Model(cfg)
    start = {n: p.detach().clone() for n, p in ref.named_parameters()}
    params = [p for n, p in ref.named_parameters() if n.startswith(("front.vision", "front.aligner", "front.ocr_head"))]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=1e-6)
    want = []
    for micro in batches:
        cells = sum(b.targets.numel() for b in micro)
        opt.zero_grad()
        total = sum(torch.nn.functional.cross_entropy(ref.front.read(b.images).flatten(0, 1), b.targets.flatten(),
                                                      reduction="sum") for b in micro) / cells
        total.backward()
        opt.step()
        want.append(total.item())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    trained = dict(engine.module.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(trained[name].detach(), p.detach(), rtol=0, atol=1e-5, msg=name)
        moved = not torch.equal(p.detach(), start[name])
        assert moved == name.startswith(("front.vision", "front.aligner", "front.ocr_head")), name
    engine.destroy()


def test_front_readback_scores_a_perfect_reader(tiny_data):
    """A reader that returns the true cells scores 100 % (and the blind score, reading the next
    chunk's cells, less); the reference is the chunk's text."""
    from megatron_vist2.metrics.front import front_readback
    from megatron_vist2.metrics.readback import held_out_chunks
    cfg = _cfg("tiny-cpu", tiny_data)
    tok = load_tokenizer(cfg.data.tokenizer)
    chunks = held_out_chunks(open_indexed(cfg.data.valid_prefix, tok), 32, 6)
    renderer, charset, cell = Renderer.from_model_config(cfg.model), Charset(cfg.model.ocr_head), cell_size(cfg.model)
    truth = {}
    for c in chunks:
        image, targets = render_with_targets(renderer, chunk_text(tok.decode(c.tolist())), cfg.model.ocr_head, charset,
                                             cell)
        truth[image.tobytes()] = targets
    classes = cfg.model.ocr_head.num_classes

    def read(images):
        cells = torch.stack([torch.from_numpy(truth[im.numpy().tobytes()]) for im in images])
        return torch.nn.functional.one_hot(cells, classes).float()
    out = front_readback(read, chunks, renderer, tok, cfg.model.ocr_head, cell)
    assert out["char_accuracy"] == 1.0 and out["exact_match"] == 1.0 and out["chunks"] == 6
    assert out["blind"]["char_accuracy"] < 0.5


def test_export_leaves_the_head_and_the_cursor_out(tiny_data):
    from megatron_vist2.convert.vist2 import name_pairs
    from megatron_vist2.models import Vist2Model
    cfg = _cfg("tiny-cpu", tiny_data, "model.readback_cursor=true")
    names = {n for n, _ in Vist2Model(cfg).named_parameters()}
    exported = {ours for ours, _, _ in name_pairs(cfg)}
    aids = {n for n in names if n.startswith(("front.ocr_head.", "front.cursor."))}
    assert exported == names - aids and {n.split(".")[1] for n in aids} == {"ocr_head", "cursor"}


def test_legibility_warning_fires_once_below_the_minimum_and_not_elsewhere(tiny_data, monkeypatch):
    monkeypatch.setattr(renderer_module, "_WARNED_SIZES", set())
    old_rho8 = validate(load_config("tiny-cpu", tiny_overrides(
        tiny_data, "model.chunk.image_width=64", "model.render.min_font_size=3", "model.render.margin=1")))
    text = "Fellow citizens of the Senate and of the House of Representatives: " * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = Renderer.from_model_config(old_rho8.model)
        r.render(text)
        r.render(text)                          # the same size again: no second warning
    illegible = [w for w in caught if issubclass(w.category, IllegibleRenderWarning)]
    assert len(illegible) == 1
    message = str(illegible[0].message)
    size = r.layout(text)[0].size
    assert f"font size {size}" in message and "min_legible_advance=4" in message and "model.aligner.merge" in message
    assert load_font(old_rho8.model.render.font, size).getlength("0") < 4
    for preset in PRESETS:                      # the presets draw every test chunk legibly
        cfg = _cfg(preset, tiny_data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = Renderer.from_model_config(cfg.model)
            for t in _texts(tiny_data, cfg, 200):
                r.render(t)
        assert not [w for w in caught if issubclass(w.category, IllegibleRenderWarning)], preset
    off = validate(load_config("tiny-cpu", tiny_overrides(
        tiny_data, "model.chunk.image_width=64", "model.render.min_font_size=3", "model.render.min_legible_advance=0")))
    monkeypatch.setattr(renderer_module, "_WARNED_SIZES", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Renderer.from_model_config(off.model).render(text)
    assert not [w for w in caught if issubclass(w.category, IllegibleRenderWarning)]
