"""DeepSpeed on 4 gloo ranks equals the single-process run: pipeline x data parallel under
ZeRO-3 (a ZeRO-3 engine per pipeline stage over that stage's data-parallel group) and ZeRO-1,
pipeline x tensor parallel, and tensor x data parallel under ZeRO-3. One job of the 4-rank pool."""
import pytest

from tests.distributed.conftest import scenarios_of
from tests.distributed.parity import assert_matches_reference
from tests.distributed.scenario import SCENARIOS

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)

WORLD = 4


@pytest.mark.parametrize("scenario", scenarios_of(WORLD))
def test_four_ranks_equal_single_process(parity_results, references, scenario):
    assert_matches_reference(parity_results[scenario], references[SCENARIOS[scenario].model], scenario)
