"""Behaviour of the VIST2 model, not just its mask: what may and may not influence what.

Each invariance has a positive control (a change that must show), so the tests can fail."""
import pytest
import torch
import torch.nn.functional as F

from megatron_vist2.data.dataset import collate
from megatron_vist2.data.packing import Segment
from megatron_vist2.models import TEXT, VISUAL
from megatron_vist2.metrics.loss import token_losses

from ..conftest import tiny_model


@pytest.fixture(scope="module")
def setup(dist_env, tiny_data):
    cfg, _, ds, model = tiny_model(tiny_data, "model.init_std=0.1", "data.seq_length=320")
    return cfg, ds, model, cfg.model.chunk.text_tokens


def make_batch(ds, L, readback_first=False):
    """Row: doc 0 with 5 chunks (last one short), then doc 1 with 2 chunks."""
    a = Segment(0, 100, 4 * L + 5, (readback_first, False, False, False, False))
    b = Segment(1, 0, 2 * L, (False, False))
    return collate([ds.build_row([a, b])])


def sel(batch, doc, chunk, kind):
    lay = batch.layout
    return ((lay.doc == doc) & (lay.chunk == chunk) & (lay.kind == kind))[0]


def image_index(batch, doc, chunk):
    """Which image in batch.images belongs to (doc, chunk)'s visual block."""
    lay = batch.layout
    vis = (lay.kind == VISUAL)[0]
    starts = [s for s in range(vis.numel()) if vis[s] and (s == 0 or not vis[s - 1] or
                                                          lay.chunk[0, s] != lay.chunk[0, s - 1])]
    for n, s in enumerate(starts):
        if lay.doc[0, s] == doc and lay.chunk[0, s] == chunk:
            return n
    raise KeyError((doc, chunk))


@torch.no_grad()
def logits(model, batch):
    return model(batch)[:, 0]                     # [seq, vocab]


def perturb_text(batch, where, seed=0):
    out = type(batch)(tokens=batch.tokens.clone(), layout=batch.layout, images=batch.images.clone(),
                      labels=batch.labels, loss_mask=batch.loss_mask)
    g = torch.Generator().manual_seed(seed)
    new = torch.randint(3, 500, (int(where.sum()),), generator=g)
    out.tokens[0, where] = new
    assert not torch.equal(out.tokens, batch.tokens)
    return out


def perturb_image(batch, n):
    out = type(batch)(tokens=batch.tokens, layout=batch.layout, images=batch.images.clone(),
                      labels=batch.labels, loss_mask=batch.loss_mask)
    out.images[n] = 255 - out.images[n]
    return out


def test_earlier_chunk_text_does_not_reach_later_chunk(setup):
    cfg, ds, model, L = setup
    batch = make_batch(ds, L)
    earlier_text = torch.zeros_like(sel(batch, 0, 0, TEXT))
    for c in range(3):
        earlier_text |= sel(batch, 0, c, TEXT)
    target = sel(batch, 0, 3, TEXT)
    base = logits(model, batch)
    changed = logits(model, perturb_text(batch, earlier_text))
    torch.testing.assert_close(changed[target], base[target], rtol=0, atol=1e-5)
    # control: the text of chunk 3 itself changes its later logits; an earlier image does too
    assert (logits(model, perturb_text(batch, sel(batch, 0, 3, TEXT)))[target] - base[target]).abs().max() > 1e-3
    flipped = logits(model, perturb_image(batch, image_index(batch, 0, 1)))
    assert (flipped[target] - base[target]).abs().max() > 1e-3


def test_chunk_text_does_not_reach_its_own_visual_tokens(setup):
    cfg, ds, model, L = setup
    batch = make_batch(ds, L)
    own_visual = sel(batch, 0, 2, VISUAL)
    base = logits(model, batch)
    changed = logits(model, perturb_text(batch, sel(batch, 0, 2, TEXT)))
    torch.testing.assert_close(changed[own_visual], base[own_visual], rtol=0, atol=1e-5)
    flipped = logits(model, perturb_image(batch, image_index(batch, 0, 2)))
    assert (flipped[own_visual] - base[own_visual]).abs().max() > 1e-3


def test_packed_documents_are_isolated(setup):
    cfg, ds, model, L = setup
    batch = make_batch(ds, L)
    doc0 = (batch.layout.doc == 0)[0]
    other = perturb_text(batch, (batch.layout.doc == 1)[0] & (batch.layout.kind == TEXT)[0])
    other = perturb_image(other, image_index(batch, 1, 0))
    base, changed = logits(model, batch), logits(model, other)
    torch.testing.assert_close(changed[doc0], base[doc0], rtol=0, atol=1e-5)
    doc1 = (batch.layout.doc == 1)[0]
    assert (changed[doc1] - base[doc1]).abs().max() > 1e-3


def test_readback_mode_lets_text_see_its_own_image(setup):
    cfg, ds, model, L = setup
    for readback, should_change in ((False, False), (True, True)):
        batch = make_batch(ds, L, readback_first=readback)
        own = image_index(batch, 0, 0)
        target = sel(batch, 0, 0, TEXT)
        diff = (logits(model, perturb_image(batch, own))[target] - logits(model, batch)[target]).abs().max()
        assert (diff > 1e-3) == should_change, (readback, diff)


def test_loss_is_cross_entropy_on_text_targets_only(setup):
    cfg, ds, model, L = setup
    batch = make_batch(ds, L, readback_first=True)
    with torch.no_grad():
        out = model(batch)
        total, count = token_losses(out, batch)
    mask = batch.loss_mask[0] > 0
    # every target is a text token of the row (the next one in its chunk, or a chunk's first)
    text_tokens = set(batch.tokens[0][(batch.layout.kind == TEXT)[0]].tolist())
    assert set(batch.labels[0][mask].tolist()) <= text_tokens
    assert int(count) == int(mask.sum()) > 0
    # reference: plain cross-entropy on the selected positions; padding/visual ids never targets
    ref = F.cross_entropy(out[:, 0][mask].float(), batch.labels[0][mask], reduction="sum")
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-4)
    # positions without a target contribute nothing: scrambling their labels changes nothing
    scrambled = type(batch)(tokens=batch.tokens, layout=batch.layout, images=batch.images,
                            labels=torch.where(batch.loss_mask > 0, batch.labels, 7),
                            loss_mask=batch.loss_mask)
    torch.testing.assert_close(token_losses(out, scrambled)[0], total)
