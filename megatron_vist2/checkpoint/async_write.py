"""Asynchronous checkpoints (``checkpoint.async_save``): training stops only while this rank's
state is copied into host memory; a background thread per rank writes the files.

How a save goes (save.py drives it, the atomicity is the synchronous save's):

1. Main thread, every rank, as the synchronous save: the collective finiteness check, the
   ``<tag>.partial`` directory, ``engine.save_checkpoint`` -- but with DeepSpeed's checkpoint
   engine replaced by ``SnapshotEngine``, whose ``save(state, path)`` copies ``state`` into host
   memory instead of writing it (``snapshot``: tensors by storage, so shared storages stay
   shared and the file is byte for byte what ``torch.save`` of the live state writes).
2. ``AsyncWriter.start``: a thread writes the snapshots with DeepSpeed's own writer (the same
   ``torch.save`` call), then this rank's done marker ``<tag>.partial/.done/rank_NNNNN`` (or
   ``rank_NNNNN.failed`` with the error). The thread runs no collective, ever.
3. Rank 0 completes the checkpoint (``finish``: manifest last, rename, ``latest``) in the main
   thread: at the first step after every rank's marker is there (``poll``, no collective), or at
   the latest in ``wait``, which the next save and the end of training call: every rank joins its
   thread, then one all-reduce says whether any rank failed (each rank raises the same error).

A rank killed before step 3 leaves ``<tag>.partial``: ignored on restart, the previous checkpoint
stays the restart point. At most one save is in flight (the next save waits for the previous).

Why not DeepSpeed's DecoupledCheckpointEngine (0.19.8): it hands the *live* tensors to a writer
process through a queue (no snapshot: the next optimizer step changes what is being written),
commits inside ``engine.step`` with a barrier, writes ``latest`` itself without our manifest,
and its FastCheckpointEngine writer needs the async-I/O op (libaio).
"""
from __future__ import annotations

import copy
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from . import faults
from .format import disk_errors

DONE_DIR = ".done"
_ATOMS = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_LOCATIONS = {}                 # snapshot storage data_ptr -> the live storage's device ("cuda:0")
_TAGGER = []


def _tag_snapshot(storage):
    """torch.save's location tag of a host snapshot: the device the live storage was on, so the
    file records what the synchronous save records (and loads back onto that device)."""
    if isinstance(storage, torch.storage.TypedStorage):
        storage = storage._untyped_storage
    if storage.device.type == "cpu" and storage.data_ptr():
        return _LOCATIONS.get(storage.data_ptr())
    return None


def _register_tagger() -> None:
    if not _TAGGER:
        torch.serialization.register_package(0, _tag_snapshot, lambda storage, location: None)
        _TAGGER.append(True)


def snapshot(obj, memo: dict, storages: dict, pool: Optional[dict] = None):
    """A host copy of ``obj`` for a later ``torch.save``: containers rebuilt, tensors copied per
    storage (``storages``: the live storage -> its copy, shared by one checkpoint's files; the
    buffers from ``pool`` when it has their size), object identity kept (``memo``), other objects
    deep-copied (a LossScaler's scale, a config)."""
    if isinstance(obj, _ATOMS):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        new = _copy_tensor(obj, storages, pool)
    elif isinstance(obj, (dict, OrderedDict)):
        new = type(obj)()
        memo[id(obj)] = new
        for k, v in obj.items():
            new[snapshot(k, memo, storages, pool)] = snapshot(v, memo, storages, pool)
        if getattr(obj, "__dict__", None):     # a state dict's _metadata (pickled with it)
            new.__dict__.update(snapshot(obj.__dict__, memo, storages, pool))
        return new
    elif isinstance(obj, list):
        new = []
        memo[id(obj)] = new
        new.extend(snapshot(v, memo, storages, pool) for v in obj)
        return new
    elif type(obj) is tuple:
        new = tuple(snapshot(v, memo, storages, pool) for v in obj)
    else:
        new = copy.deepcopy(obj, memo)
    memo[id(obj)] = new
    return new


def _host_buffer(nbytes: int, cuda: bool, pool: Optional[dict]):
    """A host buffer of ``nbytes``: one the previous save used when there is one (its pages are
    mapped already: a fresh buffer costs the kernel's page faults on top of the copy, 5x the
    copy's time measured here), else a new one (pinned when the state is on a GPU)."""
    free = pool.get(nbytes) if pool is not None else None
    if free:
        return free.pop()
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda).untyped_storage()


def _copy_tensor(t: torch.Tensor, storages: dict, pool: Optional[dict] = None) -> torch.Tensor:
    src = t.untyped_storage()
    if src.nbytes() == 0:
        return t                               # nothing to copy, nothing can change
    key = src._cdata                           # torch.save's own identity of a storage
    if key not in storages:                    # (the live storage is held: its key stays its own)
        cuda = src.device.type != "cpu"
        buf = _host_buffer(src.nbytes(), cuda, pool)
        buf.copy_(src, non_blocking=cuda)
        if cuda:
            _register_tagger()
            _LOCATIONS[buf.data_ptr()] = str(src.device)
        else:                                  # a pooled buffer may have held a GPU storage
            _LOCATIONS.pop(buf.data_ptr(), None)
        storages[key] = (src, buf)
    new = torch.empty(0, dtype=t.dtype).set_(storages[key][1], t.storage_offset(), t.size(), t.stride())
    if isinstance(t, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
    elif t.requires_grad:                      # pickled with the tensor (ZeRO's fp32 partitions)
        new.requires_grad_(True)
    if getattr(t, "__dict__", None):
        new.__dict__.update(copy.deepcopy(t.__dict__))
    return new


class SnapshotEngine:
    """Stands in for DeepSpeed's checkpoint engine during ``engine.save_checkpoint``: each
    ``save(state, path)`` becomes a host snapshot and a job for the writer thread, written later
    by the real engine's ``save`` (the same serializer, the same bytes)."""

    def __init__(self, real, pool: Optional[dict] = None):
        self.real, self.pool = real, pool
        self.jobs: List[Tuple[object, str, Callable]] = []
        self.storages = {}                     # shared by the files: one copy of a storage
        self.buffers = []                      # the host buffers, back to the pool once written

    def add(self, state, path: str, write: Callable) -> None:
        # object identity matters within one file only (one pickle): a memo per file, so an id
        # reused by a temporary of DeepSpeed's between two files cannot alias
        self.jobs.append((snapshot(state, {}, self.storages, self.pool), str(path), write))

    def save(self, state_dict, path: str) -> None:
        self.add(state_dict, path, self.real.save)

    def create(self, info) -> None:
        pass

    def commit(self, info) -> bool:
        return True

    def done_copying(self) -> None:
        """Every device-to-host copy landed (they are issued non-blocking); the live storages
        are let go."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.buffers = [buf for _, buf in self.storages.values()]
        self.storages.clear()

    def __getattr__(self, name):               # makedirs, load, is_decoupled, ... as the real one
        return getattr(self.real, name)


class _Pending:
    def __init__(self, step: int, partial: Path, finish: Optional[Callable[[], None]]):
        self.step, self.partial, self.finish = step, partial, finish
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None


class AsyncWriter:
    """This rank's background checkpoint writer: at most one save in flight."""

    def __init__(self, log=print):
        self.log = log
        self.pending: Optional[_Pending] = None
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.pool = {}                         # host buffers by size, kept between saves

    def start(self, step: int, partial: Path, engine: SnapshotEngine,
              finish: Optional[Callable[[], None]]) -> None:
        """Write ``engine``'s jobs in the background; ``finish`` (rank 0) completes the save."""
        assert self.pending is None, "wait() for the previous save first"
        pending = _Pending(step, partial, finish)
        pending.thread = threading.Thread(target=self._write, args=(pending, engine.jobs, engine.buffers),
                                          name=f"checkpoint-writer-{step}", daemon=True)
        self.pending = pending
        pending.thread.start()

    def _write(self, pending: _Pending, jobs, buffers) -> None:
        marker = pending.partial / DONE_DIR / f"rank_{self.rank:05d}"
        try:
            with disk_errors(pending.partial.parent):
                for state, path, write in jobs:
                    write(state, path)
                    faults.after_async_file(pending.step, self.rank)     # tests only
                marker.parent.mkdir(exist_ok=True)
                marker.write_text("")
        except BaseException as exc:           # reported by the main thread (poll / wait)
            pending.error = exc
            try:
                marker.parent.mkdir(exist_ok=True)
                marker.with_name(marker.name + ".failed").write_text(f"{type(exc).__name__}: {exc}")
            except OSError:
                pass
        finally:
            jobs.clear()
            for buf in buffers:                # the next save copies into them (main thread:
                self.pool.setdefault(buf.nbytes(), []).append(buf)      # only once this ends)

    def _failures(self) -> List[str]:
        done = self.pending.partial / DONE_DIR
        return sorted(f"{f.name[:-len('.failed')]}: {f.read_text()}" for f in done.glob("*.failed"))

    def _all_done(self) -> bool:
        done = self.pending.partial / DONE_DIR
        return all((done / f"rank_{r:05d}").is_file() for r in range(self.world))

    def _complete(self) -> None:
        shutil.rmtree(self.pending.partial / DONE_DIR)        # not part of the checkpoint
        self.pending.finish()

    def poll(self) -> None:
        """Between steps, no collective: raise this rank's writer error; rank 0 completes the
        save once every rank's marker is there."""
        p = self.pending
        if p is None:
            return
        if p.error is not None:
            self._raise([f"rank_{self.rank:05d}: {type(p.error).__name__}: {p.error}"])
        if p.finish is None:
            if not p.thread.is_alive():
                self.pending = None
            return
        failures = self._failures()
        if failures:
            self._raise(failures)
        if self._all_done():
            p.thread.join()
            self._complete()
            self.pending = None

    def wait(self, device) -> None:
        """Collective (every rank, main thread): the save in flight is written by every rank and
        completed by rank 0; any rank's failure -> the same CheckpointError on every rank."""
        p = self.pending
        if p is not None and p.thread.is_alive():
            start = time.time()
            self.log(f"waiting for the background write of checkpoint step {p.step}")
            p.thread.join()
            self.log(f"... written after {time.time() - start:.2f} s more")
        # every rank takes part (a rank whose poll already saw its write end has nothing pending)
        failed = torch.tensor(float(p is not None and p.error is not None), device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item() > 0:
            self._raise(self._failures() if p is not None else ["on another rank"])
        if p is None:
            return
        if p.finish is not None:
            deadline = time.time() + 60        # markers of a shared filesystem may show late
            while not self._all_done() and time.time() < deadline:
                time.sleep(0.1)
            self._complete()
        self.pending = None

    def _raise(self, failures: List[str]) -> None:
        partial = self.pending.partial if self.pending is not None else "the checkpoint"
        self.pending = None
        raise CheckpointError(f"the background write of {partial} failed ({'; '.join(failures)}); "
                              f"the save stays unfinished (ignored on restart) and the previous "
                              f"checkpoint and 'latest' are untouched")
