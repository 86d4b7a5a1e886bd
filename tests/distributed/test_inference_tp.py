"""Consistency law at tensor-parallel size 2 (one job of the 2-rank pool for the module): the
TP2 engine equals the TP2 teacher-forced training forward, and both equal the single-process
(TP1) model built from the same seed."""
import pytest
import torch

from tests.conftest import tiny_model
from tests.distributed import pool
from tests.distributed.tp_scenario import OVERRIDES
from tests.inference_helpers import teacher_forced

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)


@pytest.fixture(scope="module")
def tp2(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp") / "tp2.pt"
    proc = pool.run(2, "script", ["tests/distributed/tp_inference_worker.py", str(tiny_data.root), str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return torch.load(out, weights_only=False)


def test_tp2_engine_equals_tp2_training_forward(tp2):
    worst = 0.0
    for got, ref in zip(tp2["engine"], tp2["reference"]):
        assert set(got) <= set(ref) and len(got) >= 30
        worst = max(worst, max((got[i] - ref[i]).abs().max().item() for i in got))
    assert worst <= 1e-4, worst


def test_tp2_equals_tp1(tp2, dist_env, tiny_data):
    cfg, tok, ds, model = tiny_model(tiny_data, *OVERRIDES)
    worst = 0.0
    for stream, ref2 in zip(tp2["streams"], tp2["reference"]):
        ref1 = teacher_forced(model, ds, stream)
        worst = max(worst, max((ref1[i] - ref2[i]).abs().max().item() for i in ref2))
    assert worst <= 1e-4, worst
