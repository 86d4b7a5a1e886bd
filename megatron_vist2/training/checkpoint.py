"""Checkpoints through DeepSpeed's engine (one directory per step, a ``latest`` file naming the
newest). Our client state records the step, ``consumed_samples`` and the full config.
(The training-ops issue adds atomic markers, layout changes, rotation and fault handling.)"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import yaml

from ..config import Config, config_to_dict
from ..errors import CheckpointError


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int) -> str:
    tag = f"step_{step:07d}"
    engine.save_checkpoint(cfg.checkpoint.save_dir, tag=tag,
                           client_state={"step": step, "consumed_samples": consumed_samples,
                                         "config": config_to_dict(cfg)})
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
