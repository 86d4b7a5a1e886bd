"""Run health through the real training loop, 2 gloo ranks in one launch (health_worker.py):
a NaN in one rank's loss or gradients is skipped on every rank, repeated NaNs stop the run with
the last good checkpoint untouched, a loss spike rolls back to the expected step and data
position, and a stalled rank is reported by the watchdog.

The reference is plain PyTorch in this process (as tests/distributed/parity.py): one model, the
global batches the run should have trained on, in order (the skipped batch left out: a run that
never saw it), torch AdamW with the trainer's parameter groups, and the learning rate of each
*applied* update from the warm-up formula lr_k = 1e-3 (k + 1) / 10 (a skipped step does not
advance the schedule)."""
import json

import pytest
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.models import Vist2Model
from megatron_vist2.metrics.loss import token_losses
from tests.distributed.health_worker import G, overrides
from tests.distributed.parity import launch_worker


@pytest.fixture(scope="module")
def results(tiny_data, tmp_path_factory):
    return launch_worker(2, tiny_data, tmp_path_factory.mktemp("health") / "results.pt",
                         "tests/distributed/health_worker.py")


_REFERENCES = {}


def reference(tiny_data, tmp_path, batches):
    """Weights after one AdamW update per global batch index in ``batches`` (once per list)."""
    key = tuple(batches)
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(tiny_data, tmp_path, batches)
    return _REFERENCES[key]


def _reference(tiny_data, tmp_path, batches):
    cfg = validate(load_config("tiny-cpu", overrides(tiny_data, tmp_path)))
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
    model = Vist2Model(cfg)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    micro = cfg.parallel.micro_batch_size
    for k, index in enumerate(batches):
        rows = [collate([ds[i] for i in range(s, s + micro)]) for s in range(index * G, (index + 1) * G, micro)]
        count = sum(b.loss_mask.sum() for b in rows)
        opt.zero_grad()
        for b in rows:
            (token_losses(model(b), b)[0] / count).backward()
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (k + 1) / 10
        opt.step()
    return {n: p.detach() for n, p in model.named_parameters()}


def assert_weights(got, ref, what):
    assert got.keys() == ref.keys()
    worst = max((got[n] - p).abs().max().item() for n, p in ref.items())
    assert worst <= 1e-5, f"{what}: max parameter difference {worst:.2e}"


def metrics(text):
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("name", ["nan-loss-rank1-zero1", "nan-grad-rank0-zero3", "nan-grad-rank0-pp2"])
def test_a_non_finite_step_is_skipped_on_every_rank(results, dist_env, tiny_data, tmp_path, name):
    """Step 2's batch (global batch 1) is never trained on; 3 updates applied on every rank."""
    got = results[0][name]
    assert got["steps"] == 4 and got["consumed"] == 4 * G
    assert got["adam_steps"] == [[3], [3]]
    assert_weights(got["params"], reference(tiny_data, tmp_path, [0, 2, 3]), name)
    skipped = [m for m in metrics(got["metrics"]) if "health/skipped_step" in m]
    assert [m["step"] for m in skipped] == [2]
    kind = "health/nonfinite_loss" if "loss" in name else "health/nonfinite_grad"
    assert skipped[0][kind] == 1.0
    rank = "1" if "rank1" in name else "0"
    what = "loss" if "loss" in name else "gradients"
    assert f"step 2: skipped, non-finite {what} on rank {rank}:" in results[1]


def test_repeated_nans_stop_with_the_last_good_checkpoint_intact(results):
    got = results[0]["stop-then"]
    assert "error" in got, "the run did not stop"
    assert "2 steps in a row (3..4, train.health.max_consecutive_skips)" in got["error"] and "step_0000002" in got["error"]
    assert got["before"] == got["after"] and any(k.startswith("step_0000002/") for k in got["before"])
    assert got["adam_steps"] == [[2], [2]]


def test_a_spike_rolls_back_to_the_last_checkpoint_and_skips_its_window(results, dist_env, tiny_data, tmp_path):
    """Spike at step 4 (batches 0-3 read); checkpoint at step 2; skip 2 batches after the spike:
    steps 3..6 train on global batches 6..9."""
    got = results[0]["rollback"]
    assert got["steps"] == 6 and got["consumed"] == 10 * G
    spikes = [m for m in metrics(got["metrics"]) if "health/loss_spike" in m]
    assert [(m["step"], m["health/rollback_to_step"], m["health/rollback_resume_sample"]) for m in spikes] \
        == [(4, 2, 6 * G)]
    assert got["adam_steps"] == [[6], [6]]
    assert_weights(got["params"], reference(tiny_data, tmp_path, [0, 1, 6, 7, 8, 9]), "rollback")


def test_the_watchdog_reports_a_stalled_rank(results):
    dumps = results[0]["stall"]["dumps"]
    assert sorted(dumps) == ["rank00000.txt", "rank00001.txt"]
    assert "rank 1 step 3 has run" in dumps["rank00001.txt"]
    assert "faults.py" in dumps["rank00001.txt"] and "time.sleep" in dumps["rank00001.txt"]
    assert "rank 0 step 3 has run" in dumps["rank00000.txt"]
    assert "in collective: target-count all_reduce" in dumps["rank00000.txt"]
    assert "watchdog: rank 1 step 3" in results[1]
