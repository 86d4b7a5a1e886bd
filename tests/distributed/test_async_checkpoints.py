"""Asynchronous checkpoints (checkpoint.async_save) through the real code: the files equal the
synchronous save's byte for byte (DP2 ZeRO-2, PP2: one launch), a rank killed (SIGKILL) in the
middle of a background write leaves the previous checkpoint as the restart point, and the run
exits only once the save in flight is complete."""
import json
import subprocess
import sys

import pytest

from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env
from tests.distributed.runs import train


@pytest.fixture(scope="module")
def compared(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("async_vs_sync")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "tests/distributed/async_save_worker.py", str(tiny_data.root), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("layout", ["dp2-zero2", "pp2-zero1"])
def test_async_save_equals_sync_save_bit_for_bit(compared, layout):
    got = compared[layout]
    assert got["async"] == got["sync"]
    assert any(name.endswith("optim_states.pt") for name in got["sync"])       # the shards are there
    assert "complete.json" in got["sync"] and len(got["sync"]) >= 9
    assert got["differ"] == []
    assert got["latest"] == "step_0000001" and got["partial"] == []


def test_killed_during_background_write_keeps_previous_checkpoint_and_exit_waits(tiny_data, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    args = ("train.steps=6", "checkpoint.save_interval=2", "checkpoint.async_save=true")
    crashed = train(tiny_data, out, *args, ranks=2, check=False,
                    env_extra={"MEGATRON_VIST2_FAULT": "kill-in-async-write:1:4"})
    assert crashed.returncode != 0
    assert (ckpt / "latest").read_text() == "step_0000002"
    assert (ckpt / "step_0000004.partial").is_dir() and not (ckpt / "step_0000004").exists()
    # restart: resumes from step 2; every write is slowed, so the last save is still being
    # written when training ends and the exit has to wait for it
    restarted = train(tiny_data, out, *args, ranks=2, env_extra={"MEGATRON_VIST2_FAULT": "slow-async-write:1.0"})
    assert f"resumed from {ckpt} at step 2" in restarted.stdout
    assert "waiting for the background write of checkpoint step 6" in restarted.stdout
    assert (ckpt / "latest").read_text() == "step_0000006"
    for tag in ("step_0000004", "step_0000006"):
        manifest = json.loads((ckpt / tag / "complete.json").read_text())
        assert manifest["step"] == int(tag[5:]) and ".done" not in " ".join(manifest["files"])
    assert not list(ckpt.glob("*.partial"))
