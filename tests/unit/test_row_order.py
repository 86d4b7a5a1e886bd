"""The physical row order is free: the blocked order (data/packing.py) gives the same per-target
losses and the same gradients as the spec's interleaved order, for random rows (read-back chunks,
several segments, short last chunks, padding). The reference is the interleaved row through the
same model; targets are matched by what they are (document, chunk, kind, position of the
predictor), not by where they sit. Also: the block-mask counts equal a dense count."""
import numpy as np
import pytest
import torch

from megatron_vist2.data.dataset import collate
from megatron_vist2.data.packing import Segment
from megatron_vist2.models.attention import TokenLayout, dense_mask
from megatron_vist2.cost.block_sparsity import block_counts, document_causal_mask_mod, row_layout
from megatron_vist2.metrics.loss import masked_token_losses
from tests.conftest import tiny_model


def random_rows(rng, ds, count):
    L, m, S = ds.L, ds.m, ds.S
    rows = []
    for _ in range(count):
        segs, free = [], S
        while True:
            n = int(rng.integers(1, 4))
            length = int(rng.integers(1, n * L + 1))
            flags = tuple(bool(x) for x in rng.random(-(-length // L)) < rng.choice([0.0, 0.5, 1.0]))
            seg = Segment(int(rng.integers(0, len(ds.indexed))), 0, length, flags)
            if seg.row_tokens(L, m) > free - int(rng.integers(0, L)):     # leave some padding
                break
            segs.append(seg)
            free -= seg.row_tokens(L, m)
        rows.append(segs or [Segment(0, 0, L, (False,))])
    return rows


def per_target(model, samples, backward=True):
    """{(row, doc, chunk, kind, position of the predictor): loss} and the parameter gradients."""
    model.zero_grad()
    batch = collate(samples)
    with torch.set_grad_enabled(backward):
        losses = masked_token_losses(model(batch), batch).t()        # [batch, seq]
    if backward:
        losses.sum().backward()
    lay, out = batch.layout, {}
    for b, s in zip(*torch.nonzero(batch.loss_mask, as_tuple=True)):
        key = (int(b), int(lay.doc[b, s]), int(lay.chunk[b, s]), int(lay.kind[b, s]), int(lay.position[b, s]))
        assert key not in out
        out[key] = (float(losses[b, s].detach()), int(batch.labels[b, s]))
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_blocked_order_equals_interleaved(dist_env, tiny_data, backend):
    cfg, tok, ds, model = tiny_model(tiny_data, f"model.attention_backend={backend}", "model.init_std=0.1")
    model.train()
    rows = random_rows(np.random.default_rng(3), ds, 4)
    backward = backend == "sdpa"                 # flex_attention has no backward on the CPU
    ref, ref_grads = per_target(model, [ds.build_row(r, "interleaved") for r in rows], backward)
    got, grads = per_target(model, [ds.build_row(r, "blocked") for r in rows], backward)
    assert sorted(ref) == sorted(got) and len(ref) > 100
    for key, (loss, label) in ref.items():
        assert got[key][1] == label and abs(got[key][0] - loss) <= 1e-5, key
    assert sorted(ref_grads) == sorted(grads) and (len(grads) > 10 or not backward)
    for name, g in ref_grads.items():       # 1e-5 of the gradient's scale (sums in another order)
        assert (grads[name] - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item()), name


def test_block_counts_equal_dense_count_and_blocked_order_computes_fewer_tiles():
    rng = np.random.default_rng(5)
    L, m, S, B = 8, 2, 203, 16                       # S not a multiple of the tile
    for _ in range(6):
        segs = [Segment(i, 0, int(rng.integers(1, 50)), tuple(bool(x) for x in rng.random(7) < 0.3))
                for i in range(3)]
        for order in ("interleaved", "blocked"):
            lay = row_layout(segs, L, m, S, order)
            for rule, mask in ((None, dense_mask(lay)[0, 0]),
                               (document_causal_mask_mod(lay), _dense_doc_causal(lay))):
                got = block_counts(lay, rule, B)
                nb = -(-S // B)
                padded = torch.zeros(nb * B, nb * B, dtype=torch.long)
                padded[:S, :S] = mask.long()
                tiles = padded.view(nb, B, nb, B).sum((1, 3))
                assert (got.pairs, got.full, got.partial, got.empty) == (
                    int(mask.sum()), int((tiles == B * B).sum()), int(((tiles > 0) & (tiles < B * B)).sum()),
                    int((tiles == 0).sum()))
    # one long document of 8 x 64-token chunks (m = 16) per 1024-token row: the blocked order
    # leaves more tiles empty than the interleaved one, which computes every causal tile
    one = [Segment(0, 0, 12 * 64, (False,) * 12)]
    inter, blocked = (block_counts(row_layout(one, 64, 16, 1024, o)) for o in ("interleaved", "blocked"))
    assert inter.computed == 8 * 9 // 2 and blocked.computed < inter.computed


def _dense_doc_causal(lay: TokenLayout) -> torch.Tensor:
    d = lay.doc[0]
    S = d.shape[0]
    q, k = torch.arange(S)[:, None], torch.arange(S)[None, :]
    return ((d[:, None] == d[None, :]) & (d[:, None] >= 0) & (k <= q)) | ((d[:, None] < 0) & (q == k))
