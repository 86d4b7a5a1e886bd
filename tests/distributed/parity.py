"""Shared by the parity test modules: launch the worker once per module, the single-process
reference, and the comparison.

The reference is plain PyTorch: no DeepSpeed, no process groups beyond one rank, the global batch
(8 rows) as 4 micro-batches of 2 with gradient accumulation (the order in which a one-rank run
draws dropout masks), loss = mean cross-entropy over all the batch's text targets, torch AdamW
with its own parameter groups."""
import subprocess
import sys

import numpy as np
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.models import Vist2Model
from megatron_vist2.metrics.loss import token_losses
from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env
from tests.distributed.scenario import STEPS, Layout, scenario_overrides


def launch_worker(world: int, tiny_data, out, script: str = "tests/distributed/parity_worker.py") -> dict:
    """One torchrun launch of ``script`` (args: the tiny data's root, ``out``); -> what it saved."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
           "--master_port", str(free_port()), script, str(tiny_data.root), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return torch.load(out, weights_only=True), proc.stdout + proc.stderr


def reference_run(tiny_data, tied: bool = True, kv_heads: int = 2, hidden_dropout: float = 0.0,
                  context: str = "vist2"):
    layout = Layout(1, tied=tied, kv_heads=kv_heads, hidden_dropout=hidden_dropout, context=context)
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, layout)))
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
    model = Vist2Model(cfg)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    torch.manual_seed(cfg.train.seed)          # the dropout stream every rank of stage 0 starts from
    G, micro = cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size
    losses = []
    for step in range(STEPS):
        batches = [collate([ds[i] for i in range(start, start + micro)])
                   for start in range(step * G, (step + 1) * G, micro)]
        count = sum(b.loss_mask.sum() for b in batches)
        opt.zero_grad()
        loss = 0.0
        for batch in batches:
            total, _ = token_losses(model(batch), batch)
            (total / count).backward()
            loss += (total / count).item()
        opt.step()
        losses.append(loss)
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_matches_reference(got: dict, reference, scenario: str) -> None:
    ref_losses, ref_params = reference
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=0, atol=1e-5)
    assert got["params"].keys() == ref_params.keys()
    worst = max((got["params"][n] - p).abs().max().item() for n, p in ref_params.items())
    assert worst <= 1e-5, f"{scenario}: max parameter difference {worst:.2e}"
