"""DeepSpeed on 2 gloo ranks equals a plain single-process run on the same global batch: data
parallel under ZeRO 0-3, tensor parallel (with and without sequence parallelism) under ZeRO-1
and ZeRO-3, pipeline parallel (1F1B over 4 micro-batches, even and uneven layer splits) under
ZeRO 0, 1 and 3 with tied and untied embeddings, and grouped-query attention with fewer KV heads
than TP ranks (replicated KV). One job of the session's rank pool for the whole module."""
import pytest
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.models import Vist2Model
from tests.distributed.conftest import scenarios_of
from tests.distributed.parity import assert_matches_reference
from tests.distributed.scenario import SCENARIOS, Layout, scenario_overrides

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)

WORLD = 2


@pytest.fixture(scope="module")
def reference(references):
    return references[Layout(1).model]


@pytest.mark.parametrize("scenario", scenarios_of(WORLD))
def test_two_ranks_equal_single_process(parity_results, references, scenario):
    assert_matches_reference(parity_results[scenario], references[SCENARIOS[scenario].model], scenario)


def test_training_moved_the_weights(dist_env, tiny_data, reference):
    """The parity above compares trained weights, not two copies of the initialisation."""
    ref_losses, ref_params = reference
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, Layout(1))))
    init = dict(Vist2Model(cfg).named_parameters())
    moved = max((ref_params[n] - p).abs().max().item() for n, p in init.items())
    assert moved > 1e-3 and ref_losses[-1] < ref_losses[0]


def test_weights_do_not_depend_on_the_pipeline_cut(dist_env, tiny_data):
    """Each stage builds only its parts, from per-part seeds: the union of two stages' weights is
    the whole model's, and building parts in another order does not change them."""
    from megatron_vist2.models.vist2 import StagePart
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, Layout(1))))
    whole = dict(Vist2Model(cfg).named_parameters())
    last = dict(Vist2Model(cfg, part=StagePart(False, True, range(1, 4))).named_parameters())
    first = dict(Vist2Model(cfg, part=StagePart(True, False, range(0, 1))).named_parameters())
    assert first.keys() | last.keys() == whole.keys() and not first.keys() & last.keys()
    for name, p in {**first, **last}.items():
        assert torch.equal(p, whole[name]), name
