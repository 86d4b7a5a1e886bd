"""The SLURM batch scripts, run on this machine with SLURM simulated: 2 "nodes" of 1 task each
(a stand-in `srun` starts one launch.sh per node with SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID,
a stand-in `scontrol` expands the node list and records requeues). Checks that ranks, world size
and the master address come out right, that training runs, that a run stopped early requeues
itself and a finished one does not, and that the conversion script exports the checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env, tiny_overrides

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)

SRUN = """#!/usr/bin/env bash
ntasks="$SLURM_NTASKS"
while [[ "$1" == --* ]]; do
  case "$1" in --ntasks=*) ntasks="${1#--ntasks=}" ;; esac
  shift
done
pids=()
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i SLURM_NTASKS=$ntasks SLURM_NTASKS_PER_NODE=1 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo "$3" | tr ',' '\\n' ;;
  "requeue "*) echo "$2" >> "$REQUEUE_LOG" ;;
esac
"""


@pytest.fixture
def slurm_env(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    return subprocess_env(PYTHON=sys.executable, REQUEUE_LOG=str(tmp_path / "requeued"),
                          PATH=f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                          SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="4242", SLURM_NNODES="2",
                          SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.1,127.0.0.2",
                          MASTER_PORT=str(free_port()))


def sbatch(script, env, *args):
    return subprocess.run(["bash", f"examples/slurm/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_script_runs_two_nodes_and_only_requeues_unfinished_runs(tiny_data, tmp_path, slurm_env):
    out = tmp_path / "run"
    common = ["tiny-cpu", *tiny_overrides(tiny_data), "train.log_interval=1", "train.eval_batches=1",
              f"logging.dir={out}", f"checkpoint.save_dir={out}/ckpt"]
    stopped = sbatch("train.sbatch", slurm_env, *common, "train.steps=100000", "train.max_wall_minutes=0.001")
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-4000:]
    assert f"on 2 tasks, master 127.0.0.1:{slurm_env['MASTER_PORT']}" in stopped.stdout
    assert "dp=2" in stopped.stdout                     # 2 ranks, data parallel over the 2 nodes
    assert "requeueing job 4242" in stopped.stdout
    assert (tmp_path / "requeued").read_text().split() == ["4242"]
    step = int((out / "ckpt" / "latest").read_text().split("_")[1])
    finished = sbatch("train.sbatch", slurm_env, *common, f"train.steps={step + 2}")   # the requeued job
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert f"resumed from {out / 'ckpt'} at step {step}" in finished.stdout and "stage finished" in finished.stdout
    assert (tmp_path / "requeued").read_text().split() == ["4242"]       # not requeued again
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 2

    exported = tmp_path / "exported"
    convert = sbatch("convert.sbatch", slurm_env, str(out / "ckpt"), str(exported))
    assert convert.returncode == 0, convert.stderr[-4000:]
    assert json.loads((exported / "config.json").read_text())["model_type"] == "qwen3"
