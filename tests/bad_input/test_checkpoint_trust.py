"""Issue 26's checkpoint classes through the entry points, in this process (docs/trust.md):

1. a diverged run never saves, or names as "last good", a checkpoint of blown-up weights (a
   learning rate of 1e30 makes |w| ~ 1e30 in one step, finite), and saves nothing while steps
   are skipped;
2. a resume with another optimizer or schedule applies it from the resumed step and says which
   learning rate it uses and why; a change it cannot apply is refused by name with the way to
   start a new schedule from the weights;
3. a full disk during a save, synchronous or in the background, says the disk is full (the
   kernel's real ENOSPC from /dev/full through torch.save's own writer: fault ``disk-full``);
4. an unfinished (``.partial``) step directory given to training, reshard, convert or inspect is
   named as an unfinished save;
5. a run that skipped most of its steps says so and exits non-zero.

Each case ends non-zero with one message and no traceback, the watched directories untouched
(harness.check); the runs that train write into a directory of their own, checked after.
"""
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.bad_input.conftest import copy_ckpt
from tests.bad_input.harness import Case, check, invoke

STEP = "step_0000002"
QUICK = ["train.eval_interval=0", "train.log_interval=1", "logging.tensorboard=false"]


@pytest.fixture
def run_ctx(ctx, tmp_path_factory):
    """``ctx`` whose training runs write outside the watched ``ctx.tmp``."""
    run = tmp_path_factory.mktemp("trained")
    train = [a for a in ctx.train if not a.startswith(("checkpoint.save_dir=", "logging.dir="))]
    return SimpleNamespace(**{**vars(ctx), "run": run, "train": [*train, *QUICK, f"checkpoint.save_dir={run}/ckpt",
                                                                  f"logging.dir={run}"]})


def largest_saved_weight(ckpt_dir) -> float:
    """The largest |w| over every complete checkpoint in ``ckpt_dir`` (read back from the files;
    0 when there is none)."""
    from megatron_vist2.checkpoint.format import complete_tags
    from megatron_vist2.checkpoint.sources import open_checkpoint
    largest = 0.0
    for tag in complete_tags(ckpt_dir):
        source = open_checkpoint(str(ckpt_dir / tag))
        largest = max([largest] + [source.tensor(n).abs().max().item() for n in source.names()])
    return largest


def train_with(*extra):
    return lambda c: [*c.train, *[e.format(tmp=c.tmp, ckpt=c.ckpt) for e in extra]]


BLOW_UP = ("optim.lr=1e30", "optim.min_lr=1e30", "optim.warmup_steps=0")


def half_saved(ctx):
    half = ctx.tmp / "half" / "step_0000004.partial"
    half.mkdir(parents=True)
    (half / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)


def without_marker(ctx):
    (copy_ckpt(ctx) / STEP / "complete.json").unlink()


UNFINISHED = "step_0000004.partial is an unfinished save (a run stopped while writing it"
DIVERGING = [
    # 1. the weights blow up at step 1 (finite): that save is refused as diverged, nothing is saved
    Case("diverged-blown-up-weights-not-saved", "train",
         train_with(*BLOW_UP, "train.steps=4", "checkpoint.save_interval=1"),
         ["the weights' norm after step 1 ", "checkpoint.max_weight_growth", "not saved as a checkpoint",
          "No checkpoint was saved before"]),
    # 1. no save due before the blow-up; the steps after it are skipped, and nothing is saved
    # while skipping, so the stop names no blown-up checkpoint as the last good one
    Case("diverged-no-save-while-skipping", "train",
         train_with(*BLOW_UP, "train.steps=6", "checkpoint.save_interval=2", "train.health.max_consecutive_skips=2"),
         ["2 steps in a row (2..3, train.health.max_consecutive_skips)", "No checkpoint was saved before"]),
]
CASES = [                                  # refused before anything trains
    # 2. a change a resume cannot apply (it regroups the parameters) is refused by name
    Case("resume-regrouping-optimizer-change", "train",
         train_with("checkpoint.load_dir={tmp}/copy", "optim.lr_multipliers={{front.aligner: 10.0}}"),
         ["optim.lr_multipliers: checkpoint {}, this run {'front.aligner': 10.0}",
          "checkpoint.init_from=", "a new checkpoint.save_dir"], lambda c: copy_ckpt(c)),
    # 4. an unfinished step directory, named as such by every reader
    Case("train-load-dir-is-partial", "train", train_with("checkpoint.load_dir={tmp}/half/step_0000004.partial"),
         [UNFINISHED, "holds none"], half_saved),
    Case("train-load-dir-without-marker", "train", train_with(f"checkpoint.load_dir={{tmp}}/copy/{STEP}"),
         [f"{STEP} is an unfinished save"], without_marker),
    Case("convert-partial", "tools/convert_checkpoint.py",
         lambda c: ["--checkpoint", str(c.tmp / "half" / "step_0000004.partial"), "--out", str(c.tmp / "o")],
         [UNFINISHED], half_saved),
    Case("reshard-partial", "tools/reshard_checkpoint.py",
         lambda c: ["--checkpoint", str(c.tmp / "half" / "step_0000004.partial"), "--out", str(c.tmp / "o")],
         [UNFINISHED], half_saved),
    Case("inspect-partial", "tools/inspect_checkpoint.py", lambda c: [str(c.tmp / "half" / "step_0000004.partial")],
         [UNFINISHED], half_saved),
    Case("generate-partial", "generate",
         lambda c: ["--checkpoint", str(c.tmp / "half" / "step_0000004.partial"), "--prompt", "hi"],
         [UNFINISHED], half_saved),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_checkpoint_trust_case(case, run_ctx, capsys):
    check(case, run_ctx, capsys, [run_ctx.ckpt, run_ctx.data.root])


@pytest.mark.slow      # trains in this process
@pytest.mark.parametrize("case", DIVERGING, ids=[c.id for c in DIVERGING])
def test_a_diverging_run_saves_no_blown_up_checkpoint(case, run_ctx, capsys):
    check(case, run_ctx, capsys, [run_ctx.ckpt, run_ctx.data.root])
    assert largest_saved_weight(run_ctx.run / "ckpt") < 1e6         # read back from the files


@pytest.mark.slow      # trains in this process
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_full_disk_during_a_save_says_so(run_ctx, capsys, monkeypatch, async_save):
    monkeypatch.setenv("MEGATRON_VIST2_FAULT", "disk-full:2")
    case = Case(f"disk-full-{'async' if async_save else 'sync'}", "train",
                train_with("train.steps=3", "checkpoint.save_interval=2", f"checkpoint.async_save={async_save}"),
                ["the disk is full (no space left on device)", "'latest' are untouched"]
                + (["the background write of"] if async_save else []))
    check(case, run_ctx, capsys, [run_ctx.ckpt, run_ctx.data.root])
    ckpt = run_ctx.run / "ckpt"
    assert (ckpt / f"{STEP}.partial").is_dir() and not (ckpt / STEP).exists() and not (ckpt / "latest").exists()


@pytest.mark.slow      # trains in this process
def test_a_run_that_skipped_most_steps_says_so_and_fails(run_ctx, capsys, monkeypatch):
    """Steps 1-3 of 4 have a NaN loss (below train.health.max_consecutive_skips = 5): the run
    ends, its summary counts the skips, and it exits non-zero."""
    monkeypatch.setenv("MEGATRON_VIST2_FAULT", "nan-loss:1-3")
    case = Case("most-steps-skipped", "train", train_with("train.steps=4"),
                ["3 of the 4 steps this run ran were skipped", "the run did not train"])
    check(case, run_ctx, capsys, [run_ctx.ckpt, run_ctx.data.root])
    summary = json.loads((run_ctx.run / "summary.json").read_text())
    assert summary["skipped_steps"] == 3


@pytest.fixture(scope="module")
def two_steps(tiny_data, tmp_path_factory):
    """A run of 2 steps at a constant learning rate of 1e-3, saved at step 2."""
    from tests.conftest import tiny_overrides
    out = tmp_path_factory.mktemp("two_steps")
    args = ["--preset", "tiny-cpu", *tiny_overrides(tiny_data), *QUICK, "train.eval_batches=1",
            "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.warmup_steps=0", f"logging.dir={out}",
            f"checkpoint.save_dir={out}/ckpt"]
    assert invoke("train", [*args, "train.steps=2"]) == 0
    return out, args


def resumed(two_steps, tmp_path, *extra):
    src, args = two_steps
    out = tmp_path / "resumed"
    shutil.copytree(src / "ckpt", out / "ckpt")
    args = [a for a in args if not a.startswith(("logging.dir=", "checkpoint.save_dir="))]
    return out, invoke("train", [*args, f"logging.dir={out}", f"checkpoint.save_dir={out}/ckpt", *extra])


@pytest.mark.slow      # trains in this process
def test_a_resume_applies_a_new_learning_rate_and_says_where_it_comes_from(two_steps, tmp_path, capsys):
    """The lr of step 3 is this run's (1e-4, constant: the reference is the formula), not the
    checkpoint's 1e-3, and the log names the change."""
    capsys.readouterr()
    out, code = resumed(two_steps, tmp_path, "train.steps=3", "optim.lr=1e-4", "optim.min_lr=1e-4")
    text = capsys.readouterr().out
    assert code == 0
    assert "learning rate 0.0001 at step 2: this run's optim.* and train.steps, applied from the resumed step" in text
    assert "optim.lr 0.001 -> 0.0001" in text and "checkpoint.init_from=" in text
    lrs = {m["step"]: m["train/lr"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "train/lr" in m}
    assert math.isclose(lrs[3], 1e-4, rel_tol=1e-6)


@pytest.mark.slow      # trains in this process
def test_a_resume_without_changes_continues_the_saved_schedule(two_steps, tmp_path, capsys):
    capsys.readouterr()
    out, code = resumed(two_steps, tmp_path, "train.steps=2")
    assert code == 0
    assert "learning rate 0.001 at step 2: the schedule of" in capsys.readouterr().out


@pytest.mark.slow      # trains in this process
def test_a_diverging_resume_names_the_checkpoint_it_came_from_as_last_good(two_steps, tmp_path, capsys):
    """Resumed with lr 1e30 (applied: rule 2): the save after step 3 is refused and the message
    names step 2, which holds the good weights; 'latest' stays there."""
    capsys.readouterr()
    out, code = resumed(two_steps, tmp_path, "train.steps=4", "checkpoint.save_interval=1", *BLOW_UP)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "the weights' norm after step 3" in err and f"The last good checkpoint is {out / 'ckpt' / STEP}" in err
    assert (out / "ckpt" / "latest").read_text() == STEP
    assert largest_saved_weight(out / "ckpt") < 1e6


def test_torch_write_failures_are_recognised(tmp_path, monkeypatch):
    """The errors torch.save really raises on a full disk (written to /dev/full: ENOSPC from the
    kernel) become the one-line message; on a disk with space the same RuntimeError is a write
    failure that does not claim a full disk; any other RuntimeError is left alone."""
    from megatron_vist2.checkpoint.format import disk_errors
    from megatron_vist2.errors import CheckpointError
    for size in (10, 1 << 20):                 # torch reports either failure (small, large record)
        monkeypatch.setenv("MEGATRON_VIST2_FAULT", "disk-full:1")      # the probe write hits /dev/full too
        with pytest.raises(CheckpointError, match=r"failed: the disk is full \(no space left on device\)"):
            with disk_errors(tmp_path):
                torch.save({"x": torch.ones(size)}, "/dev/full")
        monkeypatch.delenv("MEGATRON_VIST2_FAULT")
        with pytest.raises(CheckpointError, match="torch.save could not write") as exc:
            with disk_errors(tmp_path):
                torch.save({"x": torch.ones(size)}, "/dev/full")
        assert "disk is full" not in str(exc.value)
    # a path that is not ASCII goes through a Python file: torch's error carries the OSError
    (tmp_path / "ü").symlink_to("/dev/full")
    with pytest.raises(CheckpointError, match=r"failed: the disk is full"):
        with disk_errors(tmp_path):
            torch.save({"x": torch.ones(1 << 20)}, tmp_path / "ü")
    (tmp_path / "ü").unlink()
    with pytest.raises(RuntimeError, match="something else"):
        with disk_errors(tmp_path):
            raise RuntimeError("something else")
    assert list(tmp_path.iterdir()) == []                 # the probe leaves nothing behind
