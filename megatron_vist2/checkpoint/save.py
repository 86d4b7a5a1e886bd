"""Checkpoints: DeepSpeed writes each rank's shards, we make the whole atomic.

The directory's layout and its files are format.py (a ``step_NNNNNNN`` directory per
checkpoint, ``latest``, the ``complete.json`` manifest written last).

Protocol: every rank writes its shards into ``<tag>.partial``; after a barrier rank 0 writes
``complete.json``, renames the directory to ``<tag>``, replaces ``latest`` and removes the oldest
checkpoints beyond ``checkpoint.keep_last``. A crash at any point leaves the previous complete
checkpoint and ``latest`` untouched. With ``checkpoint.async_save`` the shards are copied into
host memory and written by a background thread per rank; rank 0 completes the save the same way
once every rank has written (async_write.py). Resuming is resume.py.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state

from ..config import Config, config_to_dict, data_parallel_size
from ..errors import CheckpointError
from . import faults
from .async_write import SnapshotEngine
from .divergence import refuse_non_finite
from .format import (MARKER, PARTIAL, TENSORS_FILE, advance_latest, complete_tags, describe_stage, disk_errors,
                     write_atomic, write_manifest)
from .tokenizer_record import store_tokenizer


def layout_of(cfg: Config) -> Dict[str, int]:
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    p = cfg.parallel
    return {"tensor_parallel": p.tensor_parallel, "pipeline_parallel": p.pipeline_parallel,
            "data_parallel": data_parallel_size(cfg, world),
            "zero_stage": p.zero_stage}


def stage_location(step_dir: Path) -> Tuple[Path, str]:
    """DeepSpeed's (save_dir, tag) for this rank inside a step directory (DeepSpeed names files
    by tensor-parallel rank only, so pipeline stages need directories of their own)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return step_dir.parent, step_dir.name
    return step_dir, f"stage_{parallel_state.get_pipeline_model_parallel_rank():02d}"


def _rng_states() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    states = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int,
                    tokenizer_sha256: str, log=print, writer=None) -> str:
    """Save step ``step``; with ``writer`` (an AsyncWriter, ``checkpoint.async_save``) only the
    copy into host memory happens now: the files are written in the background and the
    checkpoint is complete once ``writer`` says so (async_write.py)."""
    root = Path(cfg.checkpoint.save_dir)
    tag = f"step_{step:07d}"
    partial, final = root / f"{tag}{PARTIAL}", root / tag
    start = time.time()
    if writer is not None:
        writer.wait(engine.device)             # at most one save in flight
    refuse_non_finite(engine.module, step, str(root), engine.device)   # collective, before any write
    if (final / MARKER).is_file():            # never replace a complete checkpoint
        raise CheckpointError(f"{final} already exists (a complete checkpoint): not overwriting it; "
                              f"set checkpoint.save_dir to a new directory")
    with disk_errors(root):
        _save_checkpoint(engine, cfg, step, consumed_samples, tokenizer_sha256, log, tag, partial,
                         final, start, writer)
    return str(final)


def _save_checkpoint(engine, cfg, step, consumed_samples, tokenizer_sha256, log, tag, partial, final, start,
                     writer):
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)          # left by an earlier crash
    dist.barrier()
    save_dir, ds_tag = stage_location(partial)
    snap = None if writer is None else SnapshotEngine(engine.checkpoint_engine, writer.pool)
    real, engine.checkpoint_engine = engine.checkpoint_engine, snap or engine.checkpoint_engine
    try:
        engine.save_checkpoint(str(save_dir), tag=ds_tag, save_latest=False,
                               client_state={"step": step, "consumed_samples": consumed_samples,
                                             "config": config_to_dict(cfg),
                                             "tokenizer_sha256": tokenizer_sha256})
    finally:
        engine.checkpoint_engine = real
    (partial / "rng").mkdir(exist_ok=True)
    rng_file = partial / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if snap is None:
        torch.save(_rng_states(), rng_file)
    else:
        snap.add(_rng_states(), rng_file, torch.save)
        snap.done_copying()
    stages = [None] * dist.get_world_size()    # each stage's parameters, for resharding
    leader = parallel_state.get_tensor_model_parallel_rank() == 0 and \
        parallel_state.get_data_parallel_rank() == 0
    dist.all_gather_object(stages, (parallel_state.get_pipeline_model_parallel_rank(), describe_stage(
        engine.module, engine.optimizer, cfg.parallel.tensor_parallel)) if leader else None)
    if dist.get_rank() == 0:                   # the small files, now (the thread runs no collective)
        ordered = [d for _, d in sorted(x for x in stages if x is not None)]
        (partial / TENSORS_FILE).write_text(json.dumps({"stages": ordered}))
        (partial / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        stored = store_tokenizer(partial, cfg.data.tokenizer)     # tools find it from anywhere
    finish = None if dist.get_rank() != 0 else (lambda: _complete(
        cfg, partial, final, tag, log, start, step=step, consumed_samples=consumed_samples,
        layout=layout_of(cfg), tokenizer_sha256=tokenizer_sha256, **stored))
    if writer is not None:
        log(f"checkpoint {final}: state copied to host memory in {time.time() - start:.2f} s; "
            f"written in the background")
        writer.start(step, partial, snap, finish)
        return
    faults.kill_in_save(step, dist.get_rank())     # tests only
    dist.barrier()                             # every rank has written its shards
    if finish is not None:
        finish()
    dist.barrier()


def _complete(cfg, partial: Path, final: Path, tag: str, log, start: float, **manifest) -> None:
    """Rank 0, once every rank's files are written: the manifest last, the rename, ``latest``,
    then the oldest checkpoints beyond ``checkpoint.keep_last`` go."""
    root = final.parent
    with disk_errors(root):
        write_manifest(partial, **manifest)
        partial.rename(final)
        if not advance_latest(root, tag, write_atomic):
            log(f"{root / 'latest'} names a newer checkpoint than {tag}: left as it is")
        size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        log(f"saved checkpoint {final} ({size / 2 ** 20:,.1f} MiB) in {time.time() - start:.2f} s")
        keep = cfg.checkpoint.keep_last
        for old in (complete_tags(root)[:-keep] if keep > 0 else []):
            if old != tag:
                shutil.rmtree(root / old)
                log(f"removed old checkpoint {root / old} (checkpoint.keep_last={keep})")
