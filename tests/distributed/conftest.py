"""Fixtures of the parity modules: each module sets WORLD (2 or 4); its scenarios run in one job
of the session's rank pool (tests/distributed/pool.py), and the single-process references once
per model variant. How to add a multi-rank case: tests/README.md."""
import pytest

from tests.distributed.parity import launch_worker, reference_run
from tests.distributed.scenario import SCENARIOS


def scenarios_of(world: int, reference: bool = True):
    """The scenarios of ``world`` ranks that a single-process run can check (``reference``), or
    the others (compared with a twin layout instead)."""
    return [name for name, layout in SCENARIOS.items()
            if layout.world == world and layout.has_reference == reference]


@pytest.fixture(scope="module")
def parity_results(request, tiny_data, tmp_path_factory):
    world = request.module.WORLD
    return launch_worker(world, tiny_data, tmp_path_factory.mktemp(f"parity{world}") / "results.pt")[0]


@pytest.fixture(scope="module")
def references(request, dist_env, tiny_data):
    """One single-process run per model variant (tied embeddings, KV heads, dropout) used."""
    models = {SCENARIOS[n].model for n in scenarios_of(request.module.WORLD)}
    return {model: reference_run(tiny_data, *model) for model in models}
