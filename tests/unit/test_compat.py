"""parallel/compat.py: every third-party internal it patches exists in the installed (pinned)
versions, a missing one fails naming the package, its version and the attribute, and no other
module of the package touches these internals."""
from importlib import metadata
from pathlib import Path

import pytest

from megatron_vist2.parallel import compat

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_vist2"


@pytest.mark.parametrize("patched", compat.PATCHED, ids=lambda p: f"{p.module}.{p.attribute}")
def test_every_patched_attribute_exists_in_the_installed_version(patched):
    owner = compat.check(patched)
    assert hasattr(owner, patched.attribute.split(".")[-1])


def test_a_missing_attribute_names_package_version_and_attribute():
    with pytest.raises(RuntimeError) as err:
        compat.check(compat.Patched("deepspeed", "deepspeed.runtime.engine", "DeepSpeedEngine.no_such_method"))
    message = str(err.value)
    assert f"deepspeed {metadata.version('deepspeed')}" in message
    assert "deepspeed.runtime.engine.DeepSpeedEngine.no_such_method is gone" in message


def test_patches_live_in_compat_only():
    # an assignment to (or a getattr of) one of the patched internals
    internals = ("assert_ints_same_as_other_ranks =", ".clip_fp32_gradients =", "checkpoint_engine.load =",
                 '"clear_backward_seen_flag"', "_CUDA_RNG_STATE_TRACKER", "torch.cuda.current_device =",
                 "._global_grad_norm =")
    found = {(str(p.relative_to(PACKAGE)), name) for p in PACKAGE.rglob("*.py") if p.name != "compat.py"
             for name in internals if name in p.read_text()}
    assert found == set()
