"""Issue 14's data-loss cases through the real entry point: Ctrl-C saves and exits cleanly and
the run resumes after losing 'latest' without touching a complete checkpoint (cases 8 and 1);
a diverged run never saves its broken weights (case 7)."""
import hashlib
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, subprocess_env
from tests.distributed.runs import train, train_args

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)


def _hashes(root):
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_ctrl_c_saves_then_resume_without_latest_keeps_every_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "megatron_vist2.train",
                             *train_args(tiny_data, out, "train.steps=100000", "checkpoint.save_interval=1")],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 500
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and '"train/loss"' in metrics.read_text()):
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGINT received: saving at step" in stdout and "Traceback" not in stderr
    ckpt = out / "ckpt"
    step = int((ckpt / "latest").read_text().split("_")[1])
    assert step >= 1 and (ckpt / f"step_{step:07d}" / "complete.json").is_file()

    # case 1: 'latest' lost; the restart resumes the newest complete step and rewrites nothing
    (ckpt / "latest").unlink()
    before = _hashes(ckpt)
    resumed = train(tiny_data, out, f"train.steps={step + 1}", "checkpoint.save_interval=1")
    assert f"resuming from its newest complete checkpoint step_{step:07d}" in resumed.stdout
    assert f"at step {step} " in resumed.stdout
    after = _hashes(ckpt)
    assert all(after.get(k) == v for k, v in before.items()), "a complete checkpoint was changed"
    assert (ckpt / "latest").read_text() == f"step_{step + 1:07d}"


def test_diverged_weights_are_never_saved(tiny_data, tmp_path):
    """An update that makes the weights non-finite while step 1's loss was finite (injected:
    MEGATRON_VIST2_FAULT=nan-weights:1): the save after step 1 (before: written, and named by
    'latest', which the error's advice then resumed) is refused and nothing is left to resume."""
    proc = train(tiny_data, tmp_path, "train.steps=3", "checkpoint.save_interval=1", check=False,
                 env_extra={"MEGATRON_VIST2_FAULT": "nan-weights:1"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the weights hold NaN/inf after step 1" in proc.stderr and "Traceback" not in proc.stderr
    ckpt = tmp_path / "ckpt"
    assert not (ckpt / "latest").exists()
    assert not [p for p in ckpt.glob("step_*") if (p / "complete.json").is_file()]
