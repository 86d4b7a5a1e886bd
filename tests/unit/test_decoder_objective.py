"""The decoder's read-back objective (issue 24): weighted image-only / read-back targets
(metrics/loss.py ``TargetWeights``) and masked read-back inputs (data/packing.py
``mask_readback_inputs``), each against a reference written from the spec's rules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_vist2.data.packing import MASK_ID, Segment, assemble_row, mask_readback_inputs
from megatron_vist2.models.attention import TEXT, TokenLayout
from megatron_vist2.models.vist2 import Vist2Batch
from megatron_vist2.metrics.loss import TargetWeights, training_loss

L, M = 8, 2


def _batch(rows):
    def stack(key):
        return torch.from_numpy(np.stack([getattr(r, key) for r in rows]))
    layout = TokenLayout(doc=stack("doc"), chunk=stack("chunk"), kind=stack("kind"),
                         readback=stack("readback"), position=stack("position"))
    return Vist2Batch(tokens=stack("tokens"), layout=layout, images=torch.zeros(0, 4, 4, dtype=torch.uint8),
                      labels=stack("labels"), loss_mask=stack("loss_mask"))


def test_weighted_loss_equals_a_hand_computation():
    """One segment of three chunks, chunk 0 in read-back mode, interleaved order:
    V0 [0, 2) M0 [2] T0 [3, 11) T1 [11, 19) V1 [19, 21) T2 [21, 29). By the spec: the marker M0
    predicts T0[0] (image-only, read-back); T0's tokens predict T0[1..7] (read-back); V0's last
    token predicts T1[0] (image-only, history); T1's tokens predict T1[1..7]; V1's last token
    predicts T2[0] (image-only); T2's tokens predict T2[1..7]."""
    rng = np.random.default_rng(0)
    toks = rng.integers(3, 50, size=3 * L)
    row = assemble_row([Segment(0, 0, 3 * L, (True, False, False))], [toks], L, M, 32, order="interleaved")
    image, readback = 7.0, 3.0
    hand = np.zeros(32)
    hand[2] = image * readback
    hand[3:10] = readback
    hand[1] = image
    hand[11:18] = 1.0
    hand[20] = image
    hand[21:28] = 1.0
    batch = _batch([row])
    weights = TargetWeights(image=image, readback=readback, m=M)
    assert np.allclose(weights.of(batch)[0].numpy(), hand)
    with pytest.raises(ValueError, match="needs m"):        # the markers cannot be found without m
        TargetWeights(image=image).of(batch)

    vocab = 64
    logits = torch.randn(32, 1, vocab, dtype=torch.float32)
    ce = F.cross_entropy(logits[:, 0], batch.labels[0], reduction="none").numpy()
    expected = (hand * ce).sum() / hand.sum()
    total, split = training_loss(logits, batch, weights)
    assert abs(total.item() / weights.of(batch).sum().item() - expected) < 1e-5
    # the split statistics stay unweighted: mean cross-entropy of read-back / history targets
    rb = np.zeros(32, bool)
    rb[2:10] = True
    hist = (hand > 0) & ~rb
    assert np.allclose(split.numpy(), [ce[rb].sum(), rb.sum(), ce[hist].sum(), hist.sum()], atol=1e-4)
    # weights 1, 1: the plain sum, as before
    plain, _ = training_loss(logits, batch)
    assert abs(plain.item() - ce[hand > 0].sum()) < 1e-4


def _rows(share, seed):
    """Rows of one segment of 4 chunks (chunks 0 and 2 read back), blocked order, masked."""
    toks = np.arange(100, 100 + 4 * L)
    row = assemble_row([Segment(0, 0, 4 * L, (True, False, True, False))], [toks], L, M, 4 * (L + M + 1))
    return row, mask_readback_inputs(row, share, np.random.default_rng(seed))


def test_masked_inputs_only_in_read_back_chunks_and_labels_unchanged():
    fractions = []
    for seed in range(300):
        row, tokens = _rows(1.0, seed)
        changed = tokens != row.tokens
        text_rb = (row.kind == TEXT) & row.readback
        assert not (changed & ~text_rb).any()               # history chunks, images, padding: as built
        assert (tokens[changed] == MASK_ID).all()
        for c in (0, 2):
            fractions.append(changed[text_rb & (row.chunk == c)].mean())
    # each chunk draws u ~ U(0, 1), then masks each input with probability u: mean 1/2, and the
    # shares spread over [0, 1] (some chunks almost untouched, some almost all masked)
    assert abs(np.mean(fractions) - 0.5) < 0.05
    assert min(fractions) <= 0.125 and max(fractions) >= 0.875
    small = [(_rows(0.2, s)[1] != _rows(0.2, s)[0].tokens).sum() / (2 * L) for s in range(300)]
    assert abs(np.mean(small) - 0.1) < 0.03
    row, tokens = _rows(0.0, 0)
    assert (tokens == row.tokens).all()
    assert (_rows(0.7, 5)[1] == _rows(0.7, 5)[1]).all()     # a seed fixes the mask


def test_training_rows_are_masked_and_evaluation_rows_are_not(tiny_data, dist_env):
    """Through the dataset and the model's embedding: a masked position's input is the same
    vector whatever text it held, and every label, weight and image is the unmasked row's."""
    from megatron_vist2.config import load_config
    from megatron_vist2.data.dataset import PackedVist2Dataset, collate
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.models import Vist2Model
    from tests.conftest import tiny_overrides
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, "data.readback_fraction=1.0",
                                                 "data.readback_input_mask=1.0"))
    tok = load_tokenizer(cfg.data.tokenizer)
    indexed = open_indexed(cfg.data.train_prefix, tok)
    train = PackedVist2Dataset(indexed, tok, cfg, seed=3, training=True)
    plain = PackedVist2Dataset(indexed, tok, cfg, seed=3)
    a, b = train[4], plain[4]
    masked = a["tokens"] != b["tokens"]
    assert masked.sum() > 0
    for key in ("labels", "loss_mask", "kind", "readback", "position", "target", "images"):
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(train[4]["tokens"], a["tokens"])   # the same sample, the same mask
    model = Vist2Model(cfg)
    tokens = collate([a]).tokens
    with torch.no_grad():            # the text embedding alone (every position read as text, no images)
        hidden = model.front(tokens, torch.zeros(0), torch.full_like(tokens, TEXT))[:, 0]
    text = torch.from_numpy(a["kind"] == TEXT)
    row0 = model.front.embedding.weight[MASK_ID]
    assert torch.equal(hidden[torch.from_numpy(masked)], row0.expand(int(masked.sum()), -1))
    originals = set(b["tokens"][masked].tolist())
    assert len(originals) > 1                                  # they held different text
    held = torch.from_numpy(b["tokens"] != MASK_ID)             # not a read-back marker
    assert not torch.equal(hidden[text & held & ~torch.from_numpy(masked)][:1], row0[None])
