"""Training runs through the real entry points for the checkpoint and resume tests, on the tiny
test data, logging every step to <out>/metrics.jsonl and checkpointing to <out>/ckpt:

- one rank: ``megatron_vist2.train.main`` in this process (what ``python -m megatron_vist2.train``
  runs, without an interpreter start-up per run; the session's single-rank process group is the
  one a bare run would set up);
- several ranks: a job of the session's rank pool (tests/distributed/pool.py), i.e. ``torchrun
  ... ./launch.sh`` without a launch per run; a run that kills a rank gets its own launch.

Both return what ``subprocess.run`` returned (returncode, stdout, stderr). Tools (``tools/*.py``)
run in this process too (runpy), as their command line would.
Set ``MEGATRON_VIST2_TEST_FRESH_LAUNCH=1`` to run every run and tool in its own process again.
"""
import json

from tests.commands import command
from tests.conftest import tiny_overrides
from tests.distributed import pool

COMMON = ["train.log_interval=1", "train.eval_batches=1", "train.eval_interval=0"]


def train_args(data, out, *extra):
    """The trainer's arguments (after the launcher) for a run writing to ``out``."""
    return ["--preset", "tiny-cpu", *tiny_overrides(data), *COMMON, f"logging.dir={out}",
            f"checkpoint.save_dir={out}/ckpt", *extra]


def train(data, out, *extra, ranks=1, env_extra=None, check=True):
    args = train_args(data, out, *extra)
    if ranks > 1:
        proc = pool.run(ranks, "train", args, env_extra)
    else:
        proc = command("-m", "megatron_vist2.train", *args, env_extra=env_extra)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return {e["step"]: e["train/loss"] for e in metrics(out) if "train/loss" in e}


def tool(*args):
    """Run a script (``tools/...``) as ``python SCRIPT ARGS`` would; -> its stdout (it must
    succeed)."""
    proc = command(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
