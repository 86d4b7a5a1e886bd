"""Activation checkpointing changes memory, not math: loss and every gradient equal the run
without it, with dropout too; parameter and state-dict names are unchanged."""
import pytest
import torch

from megatron_vist2.data.dataset import collate
from megatron_vist2.metrics.loss import token_losses
from megatron_vist2.parallel.activation_checkpoint import apply_activation_checkpointing
from tests.conftest import tiny_model


def loss_and_grads(model, batch):
    model.train()
    model.zero_grad()
    total, count = token_losses(model(batch), batch)
    (total / count).backward()
    return (total / count).item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.slow                          # over ~5 s in-process: many model builds
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_keeps_loss_and_gradients(dist_env, tiny_data, mode):
    cfg, tok, ds, plain = tiny_model(tiny_data)
    _, _, _, wrapped = tiny_model(tiny_data)
    apply_activation_checkpointing(wrapped, mode)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    # count runs of a layer inside the checkpointed region (block 0's q projection)
    calls = {"plain": 0, "wrapped": 0}
    for name, model in (("plain", plain), ("wrapped", wrapped)):
        block = getattr(model.layers["0"], "_checkpoint_wrapped_module", model.layers["0"])
        attention = getattr(block.attention, "_checkpoint_wrapped_module", block.attention)
        attention.q_proj.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    batch = collate([ds[i] for i in range(2)])
    loss_a, grads_a = loss_and_grads(plain, batch)
    loss_b, grads_b = loss_and_grads(wrapped, batch)
    assert calls == {"plain": 1, "wrapped": 2}           # recomputed in backward
    assert loss_a == loss_b
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_with_dropout_recomputes_the_same_masks(dist_env, tiny_data, mode):
    """Attention dropout draws from megatron's tracked stream, hidden dropout from the default
    one: the recompute must draw the forward's masks from both, so the gradients equal those of
    the same run without checkpointing (from the same seeds)."""
    from megatron_vist2.parallel.random import seed_runtime_rng
    dropout = ("model.llm.attention_dropout=0.2", "model.llm.hidden_dropout=0.2")
    _, _, ds, plain = tiny_model(tiny_data, *dropout)
    _, _, _, wrapped = tiny_model(tiny_data, *dropout)
    apply_activation_checkpointing(wrapped, mode)
    batch = collate([ds[i] for i in range(2)])
    results = []
    for model in (plain, wrapped, plain):
        seed_runtime_rng(7)
        results.append(loss_and_grads(model, batch))
    (loss_a, grads_a), (loss_b, grads_b), (loss_c, _) = results
    seed_runtime_rng(8)
    assert loss_and_grads(plain, batch)[0] != loss_a       # dropout is on: another seed, other masks
    assert loss_a == loss_b == loss_c
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
