"""Guided attention to the reading cursor's visual token (train.cursor_attention_weight): the
rows' target keys against the rendered image and the image's regions, and the loss against a
brute-force softmax over the dense VIST2 mask."""
import numpy as np
import pytest
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.ocr_targets import cell_size
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import ConfigError
from megatron_vist2.models.attention import TEXT, VISUAL, TokenLayout, dense_mask
from megatron_vist2.models.cursor import NONE, cursor_attention_loss
from tests.conftest import tiny_overrides
from tests.unit.test_cursor import _cfg


@pytest.mark.parametrize("preset", ["tiny-cpu", "tiny-cpu-rho2"])
def test_cursor_key_is_the_visual_token_whose_region_holds_the_next_character(tiny_data, preset):
    """Each key is a visual position of the text's own chunk, and the pixel square of that token
    (patch x merge pixels, row-major) covers the most of the cursor cell's box of any token, and
    holds ink of the character drawn there (the rendered image, brute force over the regions)."""
    cfg = _cfg(preset, tiny_data, "data.readback_fraction=1.0", "train.cursor_attention_weight=1.0")
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.valid_prefix, tok), tok, cfg, 3)
    m, side = cfg.model.visual_tokens_per_chunk, cfg.model.vision.patch_size * cfg.model.aligner.merge
    H, W = cfg.model.chunk.image_height, cfg.model.chunk.image_width
    ch, cw = cell_size(cfg.model)
    columns, end = cfg.model.ocr_head.columns, cfg.model.ocr_head.lines * cfg.model.ocr_head.columns
    margin = cfg.model.render.margin
    checked = 0
    for g in range(3):
        row = ds[g]
        starts = np.nonzero(row["kind"] == VISUAL)[0][::m]
        has_cursor = row["cursor"] != NONE
        assert ((row["cursor_key"] >= 0) == (has_cursor & (row["cursor"] != end))).all()
        for pos in np.nonzero(row["cursor_key"] >= 0)[0]:
            key = int(row["cursor_key"][pos])
            assert row["kind"][key] == VISUAL and row["doc"][key] == row["doc"][pos] \
                and row["chunk"][key] == row["chunk"][pos]
            image_index = int(np.searchsorted(starts, key, side="right")) - 1
            token, image = key - starts[image_index], row["images"][image_index]
            r, c = divmod(int(row["cursor"][pos]), columns)
            y0, x0 = margin + r * ch, margin + c * cw
            overlap = [max(0, min(y0 + ch, (t // (W // side) + 1) * side) - max(y0, t // (W // side) * side))
                       * max(0, min(x0 + cw, (t % (W // side) + 1) * side) - max(x0, t % (W // side) * side))
                       for t in range(m)]
            assert overlap[token] == max(overlap)
            ty, tx = token // (W // side) * side, token % (W // side) * side
            box = image[max(y0, ty):min(y0 + ch, ty + side, H), max(x0, tx):min(x0 + cw, tx + side, W)]
            checked += int((box < 255).any())
    assert checked >= 100          # (a cell's ink may sit wholly across a region's edge: not every one)
    unguided = _cfg(preset, tiny_data, "data.readback_fraction=1.0")     # no guided attention: no keys
    assert "cursor_key" not in PackedVist2Dataset(open_indexed(cfg.data.valid_prefix, tok), tok, unguided, 3)[0]


def test_cursor_attention_loss_equals_a_dense_softmax(tiny_data):
    """-log of softmax(q k^T / sqrt(d)) over the keys the dense mask allows, summed by hand over
    heads (query head i reads KV head i // 2) and guided positions; scored in blocks of 3."""
    torch.manual_seed(0)
    B, S, H, Hkv, d = 2, 14, 4, 2, 8
    kind = torch.tensor([[VISUAL] * 4 + [TEXT] * 5 + [VISUAL] * 2 + [TEXT] * 3,
                         [VISUAL] * 2 + [TEXT] * 6 + [VISUAL] * 2 + [TEXT] * 4])
    chunk = torch.tensor([[0] * 4 + [0] * 5 + [1] * 2 + [1] * 3, [0] * 2 + [0] * 6 + [1] * 2 + [1] * 4])
    layout = TokenLayout(doc=torch.zeros(B, S, dtype=torch.long), chunk=chunk, kind=kind,
                         readback=torch.ones(B, S, dtype=torch.bool), position=torch.arange(S).expand(B, S))
    keys = torch.full((B, S), -1)
    keys[0, 5:9] = torch.tensor([0, 3, 1, 2])
    keys[0, 12:14] = torch.tensor([9, 10])
    keys[1, 3:7] = torch.tensor([1, 0, 1, 1])
    keys[1, 11] = 8
    q, k = torch.randn(B, H, S, d), torch.randn(B, Hkv, S, d)
    mask = dense_mask(layout)[:, 0]
    expected, terms = 0.0, 0
    for b in range(B):
        for s in range(S):
            if keys[b, s] < 0:
                continue
            for h in range(H):
                scores = torch.tensor([float(q[b, h, s] @ k[b, h // 2, j]) / d ** 0.5 if mask[b, s, j] else -np.inf
                                       for j in range(S)])
                expected -= float(torch.log_softmax(scores, 0)[keys[b, s]])
                terms += 1
    total, count = cursor_attention_loss(q, k, layout, "vist2", keys, block=3)
    assert count == terms == H * int((keys >= 0).sum())
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_guided_attention_reaches_the_query_and_key_projections(tiny_data):
    """A training forward leaves the guided terms on the model (one per head, layer and guided
    position); their gradient reaches the guided layer's query and key projections, and no layer
    after it."""
    from megatron_vist2.models import Vist2Model
    cfg = _cfg("tiny-cpu", tiny_data, "data.readback_fraction=1.0", "train.cursor_attention_weight=1.0",
               "train.cursor_attention_layers=1")
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.valid_prefix, tok), tok, cfg, 3)
    batch = collate([ds[0], ds[1]])
    model = Vist2Model(cfg).train()
    model(batch)
    total, count = model.take_cursor_attention_loss()
    assert count == cfg.model.llm.num_heads * int((batch.cursor_key >= 0).sum()) > 0
    assert model.take_cursor_attention_loss() is None
    total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"layers.0.attention.q_proj.weight", "layers.0.attention.k_proj.weight"} <= grads
    # (the front's weights too: the keys at visual positions are its output)
    assert not [n for n in grads if n.startswith(("layers.1", "head", "layers.0.mlp", "layers.0.attention.v_proj",
                                                  "layers.0.attention.o_proj"))]
    model.eval()
    model(batch)
    assert model.take_cursor_attention_loss() is None         # evaluation adds nothing


def test_cursor_attention_config_is_checked(tiny_data):
    with pytest.raises(ConfigError, match="set model.readback_cursor=true"):
        validate(load_config("tiny-cpu", tiny_overrides(tiny_data, "train.cursor_attention_weight=1.0")))
    with pytest.raises(ConfigError, match="train.cursor_attention_layers must be between 1 and"):
        _cfg("tiny-cpu", tiny_data, "train.cursor_attention_weight=1.0", "train.cursor_attention_layers=5")
    with pytest.raises(ConfigError, match="first pipeline stage's decoder layers \\(2"):
        _cfg("tiny-cpu", tiny_data, "train.cursor_attention_weight=1.0", "train.cursor_attention_layers=3",
             "parallel.pipeline_parallel=2")
    with pytest.raises(ConfigError, match="train.cursor_attention_weight must be >= 0"):
        _cfg("tiny-cpu", tiny_data, "train.cursor_attention_weight=-1")
