"""DeepSpeed on 2 gloo ranks equals a plain single-process run on the same global batch: data
parallel under ZeRO 0-3, and tensor parallel (TP2) under ZeRO-1 and ZeRO-3.

One torchrun launch for the whole module (scenario.SCENARIOS inside it). The reference is
plain PyTorch: no DeepSpeed, one forward over the concatenated global batch (8 rows), loss =
mean cross-entropy over all its text targets, torch AdamW with its own parameter groups."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.models import Vist2Model, token_losses
from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env
from tests.distributed.scenario import SCENARIOS, STEPS, scenario_overrides


@pytest.fixture(scope="module")
def two_rank_results(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "results.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "tests/distributed/dp_worker.py",
           str(tiny_data.root), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def reference(dist_env, tiny_data):
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, 0)))
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = Vist2Model(cfg)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    G = cfg.parallel.global_batch_size
    losses = []
    for step in range(STEPS):
        batch = collate([ds[i] for i in range(step * G, (step + 1) * G)])
        total, count = token_losses(model(batch), batch)
        loss = total / count
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_ranks_equal_single_process(two_rank_results, reference, scenario):
    ref_losses, ref_params = reference
    got = two_rank_results[scenario]
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=0, atol=1e-5)
    assert got["params"].keys() == ref_params.keys()
    worst = max((got["params"][n] - p).abs().max().item() for n, p in ref_params.items())
    assert worst <= 1e-5, f"{scenario}: max parameter difference {worst:.2e}"


def test_training_moved_the_weights(dist_env, tiny_data, reference):
    """The parity above compares trained weights, not two copies of the initialisation."""
    ref_losses, ref_params = reference
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, 0)))
    torch.manual_seed(cfg.train.seed)
    init = dict(Vist2Model(cfg).named_parameters())
    moved = max((ref_params[n] - p).abs().max().item() for n, p in init.items())
    assert moved > 1e-3 and ref_losses[-1] < ref_losses[0]
