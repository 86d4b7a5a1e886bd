"""tools/dry_run.py: the stage models it builds on the meta device (fake process groups at the
target world size) hold exactly the parameters of the analytic count, an 8B layout at 256 ranks
runs on this machine, and a layout that cannot fit is refused with its numbers."""
import re
import subprocess
import sys

import pytest

from megatron_vist2.config import load_config, validate
from megatron_vist2.config import analytic_parameter_counts
from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow              # every test runs tools/dry_run.py in a subprocess


def dry_run(*args):
    return subprocess.run([sys.executable, "tools/dry_run.py", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def stage_params(stdout):
    return [int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s+\d+\s+\d+\s+([\d,]+)\s", stdout, re.M)]


def test_stage_parameters_add_up_to_the_analytic_count():
    proc = dry_run("--preset", "8b", "--world", "4", "--gpu-memory-gib", "1000", "parallel.pipeline_parallel=4",
                   "parallel.global_batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = stage_params(proc.stdout)
    assert len(counts) == 4
    assert sum(counts) == analytic_parameter_counts(validate(load_config("8b")))["total"]


def test_256_ranks_fit_and_an_impossible_layout_is_refused():
    big = dry_run("--preset", "8b", "--world", "256", "parallel.tensor_parallel=8", "parallel.pipeline_parallel=4")
    assert big.returncode == 0, big.stderr[-3000:]
    assert "TP 8 x PP 4 x DP 8" in big.stdout and len(stage_params(big.stdout)) == 4 and "fits:" in big.stdout
    small = dry_run("--preset", "8b", "--world", "8", "parallel.zero_stage=0", "parallel.global_batch_size=8")
    assert small.returncode == 2
    assert re.search(r"does not fit: pipeline stage 0 needs [\d.]+ GiB per rank \(weights [\d.]+, gradients "
                     r"[\d.]+, optimizer [\d.]+, activations [\d.]+\) > --gpu-memory-gib 80", small.stderr)
