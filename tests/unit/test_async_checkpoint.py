"""The pieces of asynchronous checkpoints in one process: a snapshot serializes to the same bytes
as the live state (shared storages, parameters, a state dict's metadata, requires_grad) and does
not follow later changes of the live tensors; a write error in the background thread surfaces
in the main thread as a CheckpointError and nothing is completed."""
import errno
import io
from collections import OrderedDict

import pytest
import torch

from megatron_vist2.errors import CheckpointError
from megatron_vist2.training.async_checkpoint import AsyncWriter, SnapshotEngine, snapshot


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
    writer = AsyncWriter(log=lambda *_: None)
    writer.start(4, partial, snap, finish=lambda: completed.append(sorted(p.name for p in partial.iterdir())))
    writer.pending.thread.join()
    writer.poll()
    assert completed == [["a.pt"]]               # the done markers are gone before the manifest
    assert torch.equal(torch.load(partial / "a.pt")["x"], torch.ones(3))
