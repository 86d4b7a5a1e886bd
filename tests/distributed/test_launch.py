"""The documented launch commands start real 2-rank training: the DeepSpeed hostfile route
(as in examples/tiny_cpu/run.sh), torchrun, and SLURM with its variables simulated (2 tasks on
this host, a stand-in `scontrol` that expands the node list)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vist2.parallel.distributed import free_port
from tests.conftest import REPO, subprocess_env, tiny_overrides

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)

BIN = Path(sys.executable).parent


def train_args(data, out: Path):
    return ["--preset", "tiny-cpu", *tiny_overrides(data), "train.steps=2", "train.log_interval=1",
            "train.eval_batches=1", f"logging.dir={out}", f"checkpoint.save_dir={out / 'ckpt'}"]


def check_run(proc, out: Path):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "ckpt" / "latest").read_text().strip() == "step_0000002"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in entry for entry in lines)
    return summary


def env():
    return subprocess_env(PYTHON=sys.executable, PATH=f"{BIN}:{os.environ['PATH']}")


def test_deepspeed_hostfile(tiny_data, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    cmd = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh_check", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "--no_python", "./launch.sh",
           *train_args(tiny_data, tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert "dp=2" in proc.stdout
    check_run(proc, tmp_path / "run")


def test_torchrun(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "--no-python", "./launch.sh", *train_args(tiny_data, tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert "dp=2" in proc.stdout
    check_run(proc, tmp_path / "run")


def test_slurm_variables(tiny_data, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\n# scontrol show hostnames LIST\necho 127.0.0.1\n")
    (fake / "scontrol").chmod(0o755)
    port = str(free_port())
    procs = []
    for rank in range(2):
        e = env()
        e.update(PATH=f"{fake}:{e['PATH']}", SLURM_PROCID=str(rank), SLURM_NTASKS="2",
                 SLURM_LOCALID=str(rank), SLURM_NTASKS_PER_NODE="2", SLURM_JOB_ID="4242",
                 SLURM_JOB_NODELIST="node[01]", MASTER_PORT=port)
        procs.append(subprocess.Popen(["./launch.sh", *train_args(tiny_data, tmp_path / "run")],
                                      cwd=REPO, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    rank0 = subprocess.CompletedProcess([], procs[0].returncode, *outs[0])
    assert procs[1].returncode == 0, outs[1][1][-4000:]
    assert "dp=2" in rank0.stdout
    check_run(rank0, tmp_path / "run")
