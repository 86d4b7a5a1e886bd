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
from tests.distributed.runs import metrics, train


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


@pytest.fixture(scope="module")
def killed_then_restarted(tiny_data, tmp_path_factory):
    """A 2-rank run on a blend of two sources (saving every 2 steps in the background) whose rank 1
    is killed during the write of step 4, then restarted with every write slowed, so the last
    save is still being written when training ends and the exit has to wait for it."""
    import shutil
    tmp = tmp_path_factory.mktemp("killed")
    for ext in (".bin", ".idx", ".json"):                # a second source: the same documents
        shutil.copy(tiny_data.train + ext, tmp / f"other{ext}")
    blend = f"data.train_prefix=0.7 {tiny_data.train} 0.3 {tmp / 'other'}"
    out = tmp / "run"
    args = ("train.steps=6", "checkpoint.save_interval=2", "checkpoint.async_save=true", blend,
            f"data.cache_dir={tmp / 'cache'}")
    crashed = train(tiny_data, out, *args, ranks=2, check=False,
                    env_extra={"MEGATRON_VIST2_FAULT": "kill-in-async-write:4:1"})
    state = {"crashed": crashed, "latest": (out / "ckpt" / "latest").read_text(),
             "partial": sorted(p.name for p in (out / "ckpt").glob("*.partial")),
             "step4": (out / "ckpt" / "step_0000004").exists()}
    restarted = train(tiny_data, out, *args, ranks=2, env_extra={"MEGATRON_VIST2_FAULT": "slow-async-write:1-:*:1.0"})
    return out, state, restarted, args


def test_killed_during_background_write_keeps_previous_checkpoint_and_exit_waits(killed_then_restarted):
    out, crashed, restarted, _ = killed_then_restarted
    ckpt = out / "ckpt"
    assert crashed["crashed"].returncode != 0
    assert crashed["latest"] == "step_0000002"
    assert crashed["partial"] == ["step_0000004.partial"] and not crashed["step4"]
    assert f"resumed from {ckpt} at step 2" in restarted.stdout
    assert "waiting for the background write of checkpoint step 6" in restarted.stdout
    assert (ckpt / "latest").read_text() == "step_0000006"
    for tag in ("step_0000004", "step_0000006"):
        manifest = json.loads((ckpt / tag / "complete.json").read_text())
        assert manifest["step"] == int(tag[5:]) and ".done" not in " ".join(manifest["files"])
    assert not list(ckpt.glob("*.partial"))


def test_tokens_per_source_are_summed_over_data_parallel_ranks(tiny_data, killed_then_restarted):
    """The restarted run's last line counts the text tokens of samples 32..95 (steps 3-6, 16 per
    step, rows split over 2 ranks) by source: a one-process count of the same samples."""
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.dataset import build_dataset, collate, tokens_per_source
    from megatron_vist2.data.tokenizer import load_tokenizer
    from tests.conftest import tiny_overrides
    out, _, _, args = killed_then_restarted
    cfg = validate(load_config("tiny-cpu", tiny_overrides(tiny_data, *args)))
    tok = load_tokenizer(cfg.data.tokenizer)
    blend = build_dataset(cfg.data.train_prefix, tok, cfg, cfg.train.seed, 96)
    expected = tokens_per_source([collate([blend[i] for i in range(32, 96)])], 2)
    last = [e for e in metrics(out) if "train/tokens_consumed/train" in e][-1]
    assert last["step"] == 6
    assert [last["train/tokens_consumed/train"], last["train/tokens_consumed/other"]] == expected.tolist()
    assert min(expected) > 0
