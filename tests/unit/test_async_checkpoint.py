"""The pieces of asynchronous checkpoints in one process: a snapshot serializes to the same bytes
as the live state (shared storages, parameters, a state dict's metadata, requires_grad) and does
not follow later changes of the live tensors; a write error in the background thread surfaces
in the main thread as a CheckpointError and nothing is completed; the next save reuses the
host buffers; the fast finiteness check stays exact."""
import errno
import io
from collections import OrderedDict

import pytest
import torch

from megatron_vist2.errors import CheckpointError
from megatron_vist2.checkpoint.async_write import AsyncWriter, SnapshotEngine, snapshot


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _state():
    base = torch.arange(12, dtype=torch.float32)
    module = OrderedDict(weight=base.view(3, 4), row=base[4:8])          # two views of one storage
    module._metadata = OrderedDict({"": {"version": 1}})
    fp32 = torch.ones(5, requires_grad=True)
    return {"module": module, "param": torch.nn.Parameter(torch.zeros(2)), "fp32": [fp32, fp32],
            "step": 3, "scale": (1.0, "x")}


def test_snapshot_serializes_like_the_live_state_and_stays_put():
    live = _state()
    copy = snapshot(live, {}, {})
    assert _bytes(copy) == _bytes(live)
    expected = _bytes(copy)
    with torch.no_grad():
        live["module"]["weight"].add_(1.0)       # the next optimizer step
        live["fp32"][0].mul_(2.0)
    live["step"] = 4
    assert _bytes(copy) == expected and _bytes(live) != expected
    assert copy["module"]["row"].untyped_storage().data_ptr() == copy["module"]["weight"].untyped_storage().data_ptr()


def test_background_write_error_surfaces_in_the_main_thread(dist_env, tmp_path):
    partial = tmp_path / "step_0000002.partial"
    partial.mkdir()
    completed = []

    def full_disk(state, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    snap = SnapshotEngine(real=None)
    snap.add({"x": torch.ones(3)}, partial / "a.pt", full_disk)
    writer = AsyncWriter(log=lambda *_: None)
    writer.start(2, partial, snap, finish=lambda: completed.append(True))
    with pytest.raises(CheckpointError, match="the disk is full.*previous checkpoint and 'latest' are untouched"):
        writer.wait(dist_env.device)
    assert completed == [] and partial.is_dir()
    assert writer.pending is None                # the next save can start


def test_a_save_completes_in_poll_once_written(dist_env, tmp_path):
    partial = tmp_path / "step_0000004.partial"
    partial.mkdir()
    completed = []
    snap = SnapshotEngine(real=None)
    snap.add({"x": torch.ones(3)}, partial / "a.pt", torch.save)
    buffer_ptr = snap.jobs[0][0]["x"].untyped_storage().data_ptr()
    snap.done_copying()
    writer = AsyncWriter(log=lambda *_: None)
    writer.start(4, partial, snap, finish=lambda: completed.append(sorted(p.name for p in partial.iterdir())))
    writer.pending.thread.join()
    writer.poll()
    assert completed == [["a.pt"]]               # the done markers are gone before the manifest
    assert torch.equal(torch.load(partial / "a.pt")["x"], torch.ones(3))
    # the next save copies into the same host buffer, with the same bytes as the live state
    live = {"x": torch.full((3,), 2.0)}
    snap2 = SnapshotEngine(real=None, pool=writer.pool)
    snap2.add(live, partial / "b.pt", torch.save)
    assert snap2.jobs[0][0]["x"].untyped_storage().data_ptr() == buffer_ptr
    assert _bytes(snap2.jobs[0][0]) == _bytes(live)


def test_finiteness_check_is_exact_when_the_fast_sum_overflows(dist_env):
    """refuse_non_finite sums each tensor first (one pass); a sum that overflows on finite
    weights falls back to the element-wise check instead of refusing the save."""
    from megatron_vist2.checkpoint.divergence import refuse_non_finite
    big = torch.nn.Linear(2, 2)
    with torch.no_grad():
        big.weight.fill_(3e38)                    # finite; their sum is inf in fp32
    assert not torch.isfinite(big.weight.sum())
    refuse_non_finite(big, 1, "unused", dist_env.device)
    with torch.no_grad():
        big.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN/inf after step 1"):
        refuse_non_finite(big, 1, "unused", dist_env.device)
