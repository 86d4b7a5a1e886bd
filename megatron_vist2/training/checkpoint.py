"""Checkpoints through DeepSpeed's engine (one directory per step, a ``latest`` file naming the
newest). Our client state records the step, ``consumed_samples`` and the full config.
(The training-ops issue adds atomic markers, layout changes, rotation and fault handling.)"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import yaml

from ..config import Config, config_to_dict
from ..errors import CheckpointError


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int,
                    tokenizer_sha256: str) -> str:
    tag = f"step_{step:07d}"
    engine.save_checkpoint(cfg.checkpoint.save_dir, tag=tag,
                           client_state={"step": step, "consumed_samples": consumed_samples,
                                         "config": config_to_dict(cfg),
                                         "tokenizer_sha256": tokenizer_sha256})
    path = Path(cfg.checkpoint.save_dir) / tag
    if engine.global_rank == 0:
        (path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
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
    path, client = engine.load_checkpoint(load_dir, tag=tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {Path(load_dir) / tag}")
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
