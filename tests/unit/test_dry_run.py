"""tools/dry_run.py: the stage models it builds on the meta device (fake process groups at the
target world size) hold exactly the parameters of the analytic count, an 8B layout at 256 ranks
runs on this machine, and a layout that cannot fit is refused with its numbers."""
import re

import pytest

from megatron_vist2.config import load_config, validate
from megatron_vist2.config import analytic_parameter_counts
from tests.commands import batch

pytestmark = pytest.mark.slow              # tools/dry_run.py in a process of its own

FOUR_STAGES = ("--preset", "8b", "--world", "4", "--gpu-memory-gib", "1000", "parallel.pipeline_parallel=4",
               "parallel.global_batch_size=4")
BIG = ("--preset", "8b", "--world", "256", "parallel.tensor_parallel=8", "parallel.pipeline_parallel=4")
SMALL = ("--preset", "8b", "--world", "8", "parallel.zero_stage=0", "parallel.global_batch_size=8")


@pytest.fixture(scope="module")
def dry_runs():
    """The module's tools/dry_run.py command lines in one fresh interpreter (it sets up fake
    process groups of its own): arguments -> result."""
    args = [FOUR_STAGES, BIG, SMALL]
    return dict(zip(args, batch([("tools/dry_run.py", *a) for a in args])))


def stage_params(stdout):
    return [int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s+\d+\s+\d+\s+([\d,]+)\s", stdout, re.M)]


def test_stage_parameters_add_up_to_the_analytic_count(dry_runs):
    proc = dry_runs[FOUR_STAGES]
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = stage_params(proc.stdout)
    assert len(counts) == 4
    assert sum(counts) == analytic_parameter_counts(validate(load_config("8b")))["total"]


def test_256_ranks_fit_and_an_impossible_layout_is_refused(dry_runs):
    big = dry_runs[BIG]
    assert big.returncode == 0, big.stderr[-3000:]
    assert "TP 8 x PP 4 x DP 8" in big.stdout and len(stage_params(big.stdout)) == 4 and "fits:" in big.stdout
    small = dry_runs[SMALL]
    assert small.returncode == 2
    assert re.search(r"does not fit: pipeline stage 0 needs [\d.]+ GiB per rank \(weights [\d.]+, gradients "
                     r"[\d.]+, optimizer [\d.]+, activations [\d.]+\) > --gpu-memory-gib 80", small.stderr)
