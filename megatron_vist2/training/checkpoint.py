"""Checkpoints through DeepSpeed's engine (one directory per step, one sub-directory per pipeline
stage, a ``latest`` file naming the newest, replaced atomically after every rank has written).
Our client state records the step, ``consumed_samples`` and the full config. (The training-ops
issue adds completion markers, layout changes, rotation and fault handling.)"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state

from ..config import Config, config_to_dict
from ..errors import CheckpointError


def _stage_location(root: str, tag: str) -> Tuple[Path, str]:
    """DeepSpeed's (save_dir, tag) for this rank: ``root/tag`` without pipeline parallelism,
    ``root/tag/stage_SS`` per pipeline stage (DeepSpeed names files by tensor-parallel rank only,
    so stages need directories of their own)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return Path(root), tag
    return Path(root) / tag, f"stage_{parallel_state.get_pipeline_model_parallel_rank():02d}"


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int,
                    tokenizer_sha256: str) -> str:
    tag = f"step_{step:07d}"
    save_dir, stage_tag = _stage_location(cfg.checkpoint.save_dir, tag)
    engine.save_checkpoint(str(save_dir), tag=stage_tag, save_latest=False,
                           client_state={"step": step, "consumed_samples": consumed_samples,
                                         "config": config_to_dict(cfg),
                                         "tokenizer_sha256": tokenizer_sha256})
    dist.barrier()                             # every stage and rank has written its part
    path = Path(cfg.checkpoint.save_dir) / tag
    if engine.global_rank == 0:
        (path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        latest = Path(cfg.checkpoint.save_dir) / "latest"
        tmp = latest.with_name("latest.tmp")
        tmp.write_text(tag)
        tmp.replace(latest)                    # atomic: 'latest' names a finished checkpoint
    dist.barrier()
    return str(path)


def check_loadable(load_dir: str) -> str:
    """Return the tag to load from ``load_dir`` or raise CheckpointError saying what is wrong."""
    root = Path(load_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist or is not a directory "
                              f"(checkpoint.load_dir)")
    latest = root / "latest"
    try:
        tag = latest.read_text().strip()
    except OSError as exc:
        raise CheckpointError(f"{latest}: cannot read the 'latest' file ({exc.strerror}); is "
                              f"{root} a megatron_vist2 checkpoint directory?") from None
    if not (root / tag).is_dir():
        raise CheckpointError(f"{latest} names '{tag}', but {root / tag} is missing")
    return tag


def load_checkpoint(engine, load_dir: str) -> Tuple[int, int]:
    tag = check_loadable(load_dir)
    load_from, stage_tag = _stage_location(load_dir, tag)
    if not (load_from / stage_tag).is_dir():
        raise CheckpointError(f"{load_from / stage_tag} is missing: the checkpoint was saved with a "
                              f"different pipeline layout (resharding is not supported yet)")
    path, client = engine.load_checkpoint(str(load_from), tag=stage_tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {load_from / stage_tag}")
    return int(client["step"]), int(client["consumed_samples"])


MODEL_FILE = "mp_rank_00_model_states.pt"


def resolve_tag_dir(path: str) -> Path:
    """A checkpoint directory (with ``latest``) or one of its step directories -> the step dir."""
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    return p / check_loadable(path)


def read_model_state(path: str) -> Tuple[Path, dict]:
    """-> (step dir, DeepSpeed's model-states dict), loaded with weights_only (no pickled code)."""
    tag_dir = resolve_tag_dir(path)
    if (tag_dir / "stage_00").is_dir():
        raise CheckpointError(f"{tag_dir} is a pipeline-parallel checkpoint: not readable here yet "
                              f"(train with parallel.pipeline_parallel=1 to export)")
    file = tag_dir / MODEL_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: not a complete megatron_vist2 checkpoint")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:                      # truncated, corrupt, or not a checkpoint
        raise CheckpointError(f"{file} cannot be read ({type(exc).__name__}: {exc})") from None
    if state.get("mp_world_size", 1) != 1:
        raise CheckpointError(f"{file}: tensor-parallel checkpoints (mp_world_size "
                              f"{state['mp_world_size']}) are not readable here yet")
    return tag_dir, state
