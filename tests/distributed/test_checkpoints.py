"""Checkpoints under faults, through the real entry points: a rank killed (SIGKILL) in the middle
of a save leaves the previous checkpoint in charge and the restart says so; a full disk on one
rank fails the save on every rank with that rank's message (no rank left waiting); damaged or foreign
checkpoints are refused with the file and the reason; keep_last rotates; the wall-time limit
saves and exits 0."""
import json

import pytest

from tests.conftest import tiny_overrides
from tests.distributed.runs import losses, train

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)


def test_rank_killed_during_save_keeps_previous_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    crashed = train(tiny_data, out, "train.steps=6", "checkpoint.save_interval=2", ranks=2,
                    env_extra={"MEGATRON_VIST2_FAULT": "kill-in-save:4:1"}, check=False)
    assert crashed.returncode != 0
    ckpt = out / "ckpt"
    assert (ckpt / "latest").read_text() == "step_0000002"
    assert (ckpt / "step_0000004.partial").is_dir() and not (ckpt / "step_0000004").exists()
    restarted = train(tiny_data, out, "train.steps=6", "checkpoint.save_interval=2", ranks=2)  # auto-resume
    assert "ignoring incomplete checkpoint(s)" in restarted.stdout and "step_0000004.partial" in restarted.stdout
    assert f"resumed from {ckpt} at step 2" in restarted.stdout
    assert (ckpt / "latest").read_text() == "step_0000006"
    # the reference run; its final save meets a full disk on rank 1 only (the kernel's ENOSPC,
    # /dev/full): both ranks end with rank 1's message instead of rank 0 waiting in a collective
    straight = tmp_path / "straight"
    full = train(tiny_data, straight, "train.steps=6", ranks=2, check=False,
                 env_extra={"MEGATRON_VIST2_FAULT": "disk-full:6:1"})
    assert full.returncode != 0
    assert "error: rank 1: saving to" in full.stderr and "the disk is full" in full.stderr
    assert not (straight / "ckpt" / "step_0000006").exists()
    assert losses(out)[6] == losses(straight)[6]     # the restart continued the same run


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    train(tiny_data, out, "train.steps=3", "checkpoint.save_interval=1", "checkpoint.keep_last=2")
    return out


def test_keep_last_rotates_complete_checkpoints(saved):
    assert sorted(p.name for p in (saved / "ckpt").glob("step_*")) == ["step_0000002", "step_0000003"]
    manifest = json.loads((saved / "ckpt" / "step_0000003" / "complete.json").read_text())
    assert manifest["step"] == 3 and manifest["consumed_samples"] == 48 and manifest["files"]


def test_other_model_size_is_refused_by_name(tiny_data, saved, tmp_path):
    proc = train(tiny_data, tmp_path, "train.steps=4", f"checkpoint.load_dir={saved / 'ckpt'}",
                 "model.llm.num_layers=2", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds a different model" in proc.stderr
    assert "model.llm.num_layers: checkpoint 4, this run 2" in proc.stderr


def test_other_vocabulary_is_refused_by_name(tiny_data, saved):
    """The same check as the entry point's preflight (which would first stop at the datasets:
    they are bound to their tokenizer), called directly."""
    from megatron_vist2.config import load_config
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.checkpoint.resume import check_compatible
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, "model.llm.vocab_size=4096"))
    with pytest.raises(CheckpointError, match=r"model.llm.vocab_size: checkpoint \d+, this run 4096"):
        check_compatible(saved / "ckpt" / "step_0000003", cfg)


def test_truncated_shard_is_refused_by_name(tiny_data, saved, tmp_path):
    import shutil
    copy = tmp_path / "ckpt"
    shutil.copytree(saved / "ckpt", copy)
    shard = next((copy / "step_0000003").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    proc = train(tiny_data, tmp_path, "train.steps=4", f"checkpoint.load_dir={copy}", check=False)
    assert proc.returncode == 2
    assert str(shard) in proc.stderr and "truncated" in proc.stderr


def test_wall_time_limit_saves_and_exits_zero(tiny_data, tmp_path):
    proc = train(tiny_data, tmp_path, "train.steps=100000", "train.max_wall_minutes=0.001")
    assert "wall-time limit (train.max_wall_minutes) reached: saving at step" in proc.stdout
    step = int((tmp_path / "ckpt" / "latest").read_text().split("_")[1])
    assert 1 <= step < 100000


@pytest.mark.parametrize("readback, empty, full", [("0.0", "train/loss_readback", "train/loss_history"),
                                                   ("1.0", "train/loss_history", "train/loss_readback")])
def test_loss_split_by_chunk_mode_and_throughput_metrics(tiny_data, tmp_path, readback, empty, full):
    """With no read-back chunks the history loss is the loss (and the read-back loss is nan);
    with read-back only, the other way round. Model FLOP/s and memory are logged."""
    import math
    train(tiny_data, tmp_path, "train.steps=2", f"data.readback_fraction={readback}")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert math.isnan(r[empty]) and abs(r[full] - r["train/loss"]) < 1e-5
        assert r["train/tflops_per_device"] > 0 and r["train/peak_memory_gb"] > 0.1


def test_new_stage_starts_from_weights_and_keeps_frozen_parts(tiny_data, saved, tmp_path):
    """checkpoint.init_from: the previous stage's weights, a fresh optimizer and step 0;
    train.freeze: the frozen parameters come out bit-identical, the others trained."""
    import torch
    from megatron_vist2.checkpoint.sources import open_checkpoint
    proc = train(tiny_data, tmp_path, "train.steps=2", f"checkpoint.init_from={saved / 'ckpt'}",
                 "train.freeze=[front.vision, layers.0]", "optim.lr_multipliers={front.aligner: 10}",
                 "data.readback_fraction=1.0", "train.ocr_probe_batches=1")
    assert f"initialised from the weights of {saved / 'ckpt'} (its step 3)" in proc.stdout
    assert "OCR read-back accuracy" in proc.stdout
    old, new = open_checkpoint(str(saved / "ckpt")), open_checkpoint(str(tmp_path / "ckpt"))
    before = {n: old.tensor(n) for n in old.names()}
    after = {n: new.tensor(n) for n in new.names()}
    assert json.loads((tmp_path / "ckpt" / "step_0000002" / "complete.json").read_text())["consumed_samples"] == 32
    frozen = [n for n in before if n.startswith(("front.vision.", "layers.0."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    trained = [n for n in before if n.startswith(("front.aligner.", "layers.1.", "head."))]
    assert all(not torch.equal(before[n], after[n]) for n in trained)


def test_control_starts_from_a_vist2_stage(tiny_data, saved, tmp_path):
    """A control (model.context text) may start from a VIST2 model's weights (controls trained from
    the same stage as the model they are measured against): its LLM tensors are the checkpoint's,
    the vision encoder and the aligner are left behind; the other way round (a VIST2 run from a
    control's weights, which has no front) is refused by name."""
    import torch
    from megatron_vist2.checkpoint.resume import check_compatible
    from megatron_vist2.checkpoint.sources import open_checkpoint
    from megatron_vist2.config import load_config
    from megatron_vist2.errors import CheckpointError
    proc = train(tiny_data, tmp_path, "train.steps=1", f"checkpoint.init_from={saved / 'ckpt'}",
                 "model.context=text", "train.freeze=[layers.0, head]")
    assert "this text control starts from its LLM" in proc.stdout and "aligner are left behind" in proc.stdout
    old, new = open_checkpoint(str(saved / "ckpt")), open_checkpoint(str(tmp_path / "ckpt"))
    names = set(new.names())
    left = set(old.names()) - names
    assert names < set(old.names()) and left and all(n.startswith(("front.vision.", "front.aligner.")) for n in left)
    frozen = [n for n in names if n.startswith(("layers.0.", "head."))]
    assert frozen and all(torch.equal(old.tensor(n), new.tensor(n)) for n in frozen)
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data))
    with pytest.raises(CheckpointError, match=r"model.context: checkpoint 'text', this run 'vist2'"):
        check_compatible(tmp_path / "ckpt" / "step_0000001", cfg, weights_only=True)


def test_zero3_resume_is_bit_exact(tiny_data, tmp_path):
    """2 ranks, ZeRO-3: 2 steps + restart + 2 steps give exactly the losses of 4 straight steps."""
    zero3 = ["parallel.zero_stage=3"]
    train(tiny_data, tmp_path / "straight", "train.steps=4", *zero3, ranks=2)
    train(tiny_data, tmp_path / "split", "train.steps=2", *zero3, ranks=2)
    restarted = train(tiny_data, tmp_path / "split", "train.steps=4", *zero3, ranks=2)
    assert "at step 2" in restarted.stdout
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert [split[s] for s in (1, 2, 3, 4)] == [straight[s] for s in (1, 2, 3, 4)]


def test_readback_curriculum_switches_share_at_the_scheduled_steps(tiny_data, tmp_path):
    """data.readback_schedule [[0, 1], [2, 0.5], [4, 0]]: steps 1-2 see read-back chunks only,
    steps 3-4 both kinds, steps 5-6 history only (the per-kind losses say which kinds a step had)."""
    import math
    proc = train(tiny_data, tmp_path, "train.steps=6", "data.readback_schedule=[[0, 1.0], [2, 0.5], [4, 0.0]]")
    assert "step 2: read-back share 0.5, rows of 272 tokens (until step 4)" in proc.stdout
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r}
    kinds = [(not math.isnan(rows[s]["train/loss_readback"]), not math.isnan(rows[s]["train/loss_history"]))
             for s in range(1, 7)]
    assert kinds == [(True, False)] * 2 + [(True, True)] * 2 + [(False, True)] * 2


def test_history_length_curriculum_grows_rows_on_every_stage(tiny_data, tmp_path):
    """data.seq_length_schedule [[0, 136], [2, 272]]: steps 1-2 train on rows of 136 tokens (the
    same losses as a run with data.seq_length=136), steps 3-4 on rows of 272; a PP2 run switches
    its stages' transfer shapes at the same step and gives the same losses."""
    schedule = "data.seq_length_schedule=[[0, 136], [2, 272]]"
    train(tiny_data, tmp_path / "short", "train.steps=2", "data.seq_length=136")
    train(tiny_data, tmp_path / "one", "train.steps=4", schedule)
    train(tiny_data, tmp_path / "pp2", "train.steps=4", schedule, "parallel.pipeline_parallel=2",
          "parallel.micro_batch_size=4", ranks=2)
    rows = [r for r in map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r]
    assert [r["train/seq_length"] for r in rows] == [136, 136, 272, 272]
    short, one, pp2 = losses(tmp_path / "short"), losses(tmp_path / "one"), losses(tmp_path / "pp2")
    assert [one[1], one[2]] == [short[1], short[2]]
    assert all(abs(pp2[s] - one[s]) <= 1e-5 for s in (1, 2, 3, 4)), (pp2, one)
