"""Training runs through the real entry points for the checkpoint and resume tests: one process
(`python -m megatron_vist2.train`) or several ranks (torchrun + launch.sh), on the tiny test data,
logging every step to <out>/metrics.jsonl and checkpointing to <out>/ckpt."""
import json
import subprocess
import sys

from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env, tiny_overrides

COMMON = ["train.log_interval=1", "train.eval_batches=1", "train.eval_interval=0"]


def train_args(data, out, *extra):
    """The trainer's arguments (after the launcher) for a run writing to ``out``."""
    return ["--preset", "tiny-cpu", *tiny_overrides(data), *COMMON, f"logging.dir={out}",
            f"checkpoint.save_dir={out}/ckpt", *extra]


def train(data, out, *extra, ranks=1, env_extra=None, check=True):
    launcher = [sys.executable, "-m", "megatron_vist2.train"] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
         str(free_port()), "--no-python", "./launch.sh"]
    env = {**subprocess_env(), **(env_extra or {})}
    proc = subprocess.run([*launcher, *train_args(data, out, *extra)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return {e["step"]: e["train/loss"] for e in metrics(out) if "train/loss" in e}


def tool(*args):
    """Run a script (``tools/...``) with this interpreter; -> its stdout (it must succeed)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
