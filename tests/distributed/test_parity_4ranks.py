"""DeepSpeed on 4 gloo ranks equals the single-process run: pipeline x data parallel under
ZeRO-3 (a ZeRO-3 engine per pipeline stage over that stage's data-parallel group) and ZeRO-1,
pipeline x tensor parallel, and tensor x data parallel under ZeRO-3. One torchrun launch."""
import pytest

from tests.distributed.parity import assert_matches_reference, launch_worker, reference_run
from tests.distributed.scenario import SCENARIOS

FOUR_RANKS = [name for name, layout in SCENARIOS.items() if layout.world == 4]


@pytest.fixture(scope="module")
def four_rank_results(tiny_data, tmp_path_factory):
    return launch_worker(4, tiny_data, tmp_path_factory.mktemp("parity4") / "results.pt")


@pytest.fixture(scope="module")
def reference(dist_env, tiny_data):
    return reference_run(tiny_data)


@pytest.mark.parametrize("scenario", FOUR_RANKS)
def test_four_ranks_equal_single_process(four_rank_results, reference, scenario):
    assert_matches_reference(four_rank_results[scenario], reference, scenario)
