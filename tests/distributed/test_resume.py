"""Starting from a checkpoint (checkpoint.load_dir) continues the run: 2 steps + resume 2 more
equals 4 steps straight (losses and eval loss, read from metrics.jsonl)."""
import json
import subprocess
import sys

from tests.conftest import REPO, subprocess_env, tiny_overrides


def run(data, out, *extra):
    args = [sys.executable, "-m", "megatron_vist2.train", "--preset", "tiny-cpu", *tiny_overrides(data),
            "train.log_interval=1", "train.eval_batches=1", "train.eval_interval=0",
            f"logging.dir={out}", f"checkpoint.save_dir={out}/ckpt", *extra]
    proc = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(log):
    return {e["step"]: e["train/loss"] for e in log if "train/loss" in e}


def test_resume_continues_exactly(tiny_data, tmp_path):
    straight = run(tiny_data, tmp_path / "straight", "train.steps=4")
    run(tiny_data, tmp_path / "split", "train.steps=2")
    resumed = run(tiny_data, tmp_path / "split", "train.steps=4",
                  f"checkpoint.load_dir={tmp_path / 'split' / 'ckpt'}")
    a, b = losses(straight), losses(resumed)
    assert b[3] == a[3] and b[4] == a[4]
    assert [e["eval/loss"] for e in straight if e["step"] == 4 and "eval/loss" in e] == \
        [e["eval/loss"] for e in resumed if e["step"] == 4 and "eval/loss" in e]
