"""The FLOP formulas (cost/flops.py) against independent counts: PyTorch's FlopCounterMode on a
real forward for every matmul and convolution, and a brute-force count of the pairs the VIST2
rule allows for attention."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_vist2.data.dataset import collate
from megatron_vist2.models.attention import PAD, vist2_mask_mod
from megatron_vist2.cost.flops import attended_pairs, forward_flops, training_flops
from tests.conftest import tiny_model


def test_matmul_flops_equal_pytorch_flop_counter(dist_env, tiny_data):
    cfg, _, ds, model = tiny_model(tiny_data)
    batch = collate([ds[0], ds[1]])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    counted = counter.get_flop_counts()["Global"]
    assert set(map(str, counted)) == {"aten.mm", "aten.convolution"}   # SDPA is not counted by it
    f, m = forward_flops(cfg), cfg.model
    B, S = batch.tokens.shape
    n, P, v = batch.images.shape[0], m.patches_per_image, m.vision
    vit_attention = 4 * v.num_layers * v.hidden_size * P * P
    ours = f.llm_linear_per_token * B * S + (f.vision_per_image - vit_attention + f.aligner_per_image) * n
    assert ours == counter.get_total_flops()


@pytest.mark.slow                          # over ~5 s in-process: a brute-force count
def test_attended_pairs_equal_brute_force(dist_env, tiny_data):
    cfg, _, ds, _ = tiny_model(tiny_data, "data.readback_fraction=0.5")
    layout = collate([ds[2], ds[3]]).layout
    rule = vist2_mask_mod(layout)
    B, S = layout.doc.shape
    pairs = sum(bool(rule(b, 0, q, k)) for b in range(B) for q in range(S) if layout.kind[b, q] != PAD
                for k in range(S))
    assert attended_pairs(layout) == pairs > 0
    f = forward_flops(cfg)
    tokens = int((layout.kind != PAD).sum())
    assert training_flops(cfg, layout, 5) == 3 * (f.llm_linear_per_token * tokens + f.llm_attention_per_key * pairs
                                                  + 5 * (f.vision_per_image + f.aligner_per_image))


def test_attended_pairs_equal_the_dense_rule_in_every_context(dist_env, tiny_data):
    """The per-chunk count (numpy, no loop over tokens) against the rule evaluated on every pair
    (models/attention.py dense_mask), for the model and both controls, rows of several documents
    and read-back chunks."""
    from megatron_vist2.models.attention import dense_mask
    for context in ("vist2", "text", "window"):
        readback = 0.5 if context == "vist2" else 0.0          # the controls have no images
        cfg, _, ds, _ = tiny_model(tiny_data, f"data.readback_fraction={readback}", f"model.context={context}")
        layout = collate([ds[i] for i in range(4)]).layout
        allowed = dense_mask(layout, context)[:, 0] & (layout.kind != PAD)[:, :, None]
        assert len(set(layout.doc[layout.doc >= 0].tolist())) > 1 or context != "vist2"
        assert attended_pairs(layout, context) == int(allowed.sum()) > 0, context
