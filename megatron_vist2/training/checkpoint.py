"""Checkpoints: DeepSpeed writes each rank's shards, we make the whole atomic.

The directory's layout and its files are checkpoint/format.py (a ``step_NNNNNNN`` directory per
checkpoint, ``latest``, the ``complete.json`` manifest written last).

Protocol: every rank writes its shards into ``<tag>.partial``; after a barrier rank 0 writes
``complete.json``, renames the directory to ``<tag>``, replaces ``latest`` and removes the oldest
checkpoints beyond ``checkpoint.keep_last``. A crash at any point leaves the previous complete
checkpoint and ``latest`` untouched. With ``checkpoint.async_save`` the shards are copied into
host memory and written by a background thread per rank; rank 0 completes the save the same way
once every rank has written (training/async_checkpoint.py). Loading checks the marker, every file's size, the model
config and the layout before DeepSpeed reads anything, and reads with ``weights_only``.

Resuming in the saved layout hands the shards to DeepSpeed and restores every rank's random
state (bit-exact). Another layout (TP, PP, DP size or ZeRO stage), or a consolidated checkpoint,
goes through checkpoint/reshard.py: full tensors sliced for the new layout, optimizer state
included; random states then start from the seed (each layout draws its own streams).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state

from ..checkpoint.format import (CONSOLIDATED, MARKER, PARTIAL, TENSORS_FILE, complete_tags, describe_stage,
                                 partial_checkpoints, read_manifest, resolve_tag_dir, safe_load, write_atomic,
                                 write_manifest)
from ..checkpoint.reshard import load_full_state
from ..checkpoint.sources import open_checkpoint
from ..config import Config, config_to_dict, data_parallel_size
from ..errors import CheckpointError
from ..parallel import compat
from ..checkpoint.safeguards import advance_latest, disk_errors, refuse_non_finite, start_point, store_tokenizer
from .async_checkpoint import SnapshotEngine


# Model settings that do not change the weights: a run may resume with other values.
_FREE_TO_CHANGE = {"model.llm.hidden_dropout", "model.llm.attention_dropout", "model.attention_backend"}


def _layout(cfg: Config) -> Dict[str, int]:
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    p = cfg.parallel
    return {"tensor_parallel": p.tensor_parallel, "pipeline_parallel": p.pipeline_parallel,
            "data_parallel": data_parallel_size(cfg, world),
            "zero_stage": p.zero_stage}


def _stage_location(step_dir: Path) -> Tuple[Path, str]:
    """DeepSpeed's (save_dir, tag) for this rank inside a step directory (DeepSpeed names files
    by tensor-parallel rank only, so pipeline stages need directories of their own)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return step_dir.parent, step_dir.name
    return step_dir, f"stage_{parallel_state.get_pipeline_model_parallel_rank():02d}"


def _fault_injection(step: int) -> None:
    """Tests only: ``MEGATRON_VIST2_FAULT=kill-in-save:RANK:STEP`` kills that rank with SIGKILL
    after it wrote its shards and before the checkpoint is marked complete."""
    spec = os.environ.get("MEGATRON_VIST2_FAULT", "")
    if spec.startswith("kill-in-save:"):
        _, rank, at = spec.split(":")
        if dist.get_rank() == int(rank) and step == int(at):
            os.kill(os.getpid(), 9)


def _rng_states() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    states = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _restore_rng(step_dir: Path, log) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    path = step_dir / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if not path.is_file():
        log(f"{path} is missing: random states start from the seed")
        return
    states = safe_load(str(path))
    torch.set_rng_state(states["torch"])
    get_cuda_rng_tracker().set_states(states["tracker"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int,
                    tokenizer_sha256: str, log=print, writer=None) -> str:
    """Save step ``step``; with ``writer`` (an AsyncWriter, ``checkpoint.async_save``) only the
    copy into host memory happens now: the files are written in the background and the
    checkpoint is complete once ``writer`` says so (training/async_checkpoint.py)."""
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
    save_dir, ds_tag = _stage_location(partial)
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
        layout=_layout(cfg), tokenizer_sha256=tokenizer_sha256, **stored))
    if writer is not None:
        log(f"checkpoint {final}: state copied to host memory in {time.time() - start:.2f} s; "
            f"written in the background")
        writer.start(step, partial, snap, finish)
        return
    _fault_injection(step)
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


def check_compatible(step_dir: Path, cfg: Config, weights_only: bool = False) -> bool:
    """The saved model must be this model; name every difference. -> whether the saved layout
    is this run's (else the checkpoint is resharded on load). ``weights_only`` (a new stage,
    checkpoint.init_from): the OCR head (model.ocr_head) may differ: a head the checkpoint lacks
    starts from its initialisation, one this run lacks is left behind (through the reshard path)."""
    from ..config import recorded_config
    # through the dataclasses: a field added since the save compares as its default
    path = step_dir / "config.yaml"
    saved = config_to_dict(recorded_config(yaml.safe_load(path.read_text()), path))
    ours = config_to_dict(cfg)
    diffs = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r}, this run {b!r}")

    walk(saved["model"], ours["model"], "model")
    diffs = [d for d in diffs if d.split(":")[0] not in _FREE_TO_CHANGE]
    head_changed = any(d.startswith("model.ocr_head.") for d in diffs)
    if weights_only:
        diffs = [d for d in diffs if not d.startswith("model.ocr_head.")]
    if diffs:
        raise CheckpointError(f"{step_dir} holds a different model:\n  - " + "\n  - ".join(diffs)
                              + "\nload a checkpoint of this model or change the model config to match")
    return read_manifest(step_dir)["layout"] == _layout(cfg) and not head_changed


def load_checkpoint(engine, cfg: Config, load_dir: str, log=print, weights_only: bool = False
                    ) -> Tuple[int, int]:
    """Resume (model, optimizer, scheduler, step, samples) from ``load_dir``'s latest complete
    checkpoint (or from ``load_dir`` itself when it is a step directory); ``weights_only``: only the model weights (a new training stage starts from them)."""
    ignored = partial_checkpoints(Path(load_dir))
    if ignored:
        log(f"ignoring incomplete checkpoint(s) in {load_dir}: {', '.join(ignored)} "
            f"(a save that did not finish)")
    step_dir = resolve_tag_dir(load_dir)
    same_layout = check_compatible(step_dir, cfg, weights_only)
    start = time.time()
    if same_layout and read_manifest(step_dir).get("format") != CONSOLIDATED:
        save_dir, ds_tag = _stage_location(step_dir)
        compat.load_checkpoints_safely(engine, safe_load)
        path, client = engine.load_checkpoint(str(save_dir), tag=ds_tag, load_module_only=weights_only,
                                              load_optimizer_states=not weights_only,
                                              load_lr_scheduler_states=not weights_only)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {save_dir / ds_tag}")
        if not weights_only:
            _restore_rng(step_dir, log)
    else:
        source = open_checkpoint(str(step_dir))
        load_full_state(engine, source, weights_only, parallel_state.get_data_parallel_group(),
                        log if dist.get_rank() == 0 else (lambda *_: None))
        client = source.client
        log(f"resharded {step_dir} (saved as {source.layout}) into this run's layout {_layout(cfg)}"
            + ("" if weights_only else "; random states start from the seed"))
    log(f"loaded checkpoint {step_dir} in {time.time() - start:.2f} s")
    return int(client["step"]), int(client["consumed_samples"])


def resume_dir(cfg: Config, log=lambda *_: None) -> Optional[str]:
    """Where this run resumes from: ``checkpoint.load_dir``, else (``checkpoint.auto_resume``) the
    save directory when it holds a complete checkpoint (its newest complete step when 'latest'
    is missing), else nowhere; CheckpointError when starting would overwrite a complete
    checkpoint (training/safeguards.py)."""
    c = cfg.checkpoint
    return start_point(c.save_dir, c.load_dir, c.auto_resume, c.init_from, log)

