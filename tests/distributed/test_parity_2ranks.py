"""DeepSpeed on 2 gloo ranks equals a plain single-process run on the same global batch: data
parallel under ZeRO 0-3, tensor parallel (with and without sequence parallelism) under ZeRO-1
and ZeRO-3, pipeline parallel (1F1B over 4 micro-batches, even and uneven layer splits) under
ZeRO 0, 1 and 3 with tied and untied embeddings, and grouped-query attention with fewer KV heads
than TP ranks (replicated KV). Dropout inside tensor-parallel regions under TP2 + ZeRO-3 has no
single-process reference: there activation checkpointing (full, selective) equals the same run
without it. The data-parallel gradient reductions DeepSpeed runs per step are the planner's. One job of
the session's rank pool for the whole module."""
import pytest
import torch

from megatron_vist2.config import gradient_reductions_per_step, load_config, validate
from megatron_vist2.models import Vist2Model
from tests.distributed.conftest import scenarios_of
from tests.distributed.parity import assert_matches_reference
from tests.distributed.scenario import RECOMPUTE_TWINS, SCENARIOS, Layout, scenario_overrides

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)

WORLD = 2


@pytest.fixture(scope="module")
def reference(references):
    return references[Layout(1).model]


@pytest.mark.parametrize("scenario", scenarios_of(WORLD))
def test_two_ranks_equal_single_process(parity_results, references, scenario):
    assert_matches_reference(parity_results[scenario], references[SCENARIOS[scenario].model], scenario)


@pytest.mark.parametrize("scenario", scenarios_of(WORLD, reference=False))
def test_recomputation_with_dropout_equals_the_run_without(parity_results, scenario):
    if scenario not in RECOMPUTE_TWINS:        # the twin itself: dropout must change the run
        assert parity_results[scenario]["losses"] != parity_results["tp2-sp-zero3"]["losses"]
        return
    twin = parity_results[RECOMPUTE_TWINS[scenario]]
    assert_matches_reference(parity_results[scenario], (twin["losses"], twin["params"]), scenario)


@pytest.mark.parametrize("scenario", ["dp2-zero0", "dp2-zero1", "dp2-zero2", "dp2-zero3"])
def test_gradient_reductions_per_step_are_the_planners(parity_results, tiny_data, scenario):
    """ZeRO 0/1 reduce each gradient once per step, ZeRO 2/3 after every micro-batch (here 2):
    the elements DeepSpeed handed to all-reduce / reduce-scatter, per trainable parameter, against
    config/derived.py (which cost/planner.py multiplies its traffic by). Scalars (loss, target
    count, norm) add a few elements."""
    layout = SCENARIOS[scenario]
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, layout)), WORLD)
    planned = gradient_reductions_per_step(cfg, WORLD)
    got = parity_results[scenario]
    for step, elements in enumerate(got["reduced"]):
        assert planned <= elements / got["trainable"] < planned + 0.01, (scenario, step, elements)
    assert planned == (2 if layout.zero >= 2 else 1)


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
