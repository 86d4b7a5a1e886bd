"""Where a run starts and how it resumes.

- ``start_point`` / ``resume_dir``: where a run starts, given ``checkpoint.save_dir``'s contents.
  A save directory with complete checkpoints is resumed from (its ``latest``, or the newest
  complete step when ``latest`` is missing) or refused: a new run never overwrites a complete
  checkpoint.
- ``check_compatible``: the saved model must be this model (every differing field named).
- ``load_checkpoint``: the saved layout goes to DeepSpeed (random states restored: bit-exact);
  another layout, or a consolidated checkpoint, is resharded (reshard.py), optimizer included.
- ``check_dir_writable``: the save directory is checked writable before anything starts.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state

from ..config import Config, config_to_dict
from ..errors import CheckpointError, ConfigError
from ..parallel import compat
from .format import (CONSOLIDATED, LATEST, MARKER, check_loadable, complete_tags, partial_checkpoints,
                     read_latest, read_manifest, resolve_tag_dir, safe_load, step_of)
from .reshard import load_full_state
from .save import layout_of, stage_location
from .sources import open_checkpoint

# Model settings that do not change the weights: a run may resume with other values.
_FREE_TO_CHANGE = {"model.llm.hidden_dropout", "model.llm.attention_dropout", "model.attention_backend"}


def start_point(save_dir: str, load_dir: Optional[str], auto_resume: bool,
                init_from: Optional[str], log=print) -> Optional[str]:
    """Where a run resumes from (None: from scratch or ``init_from``), or CheckpointError when
    starting would overwrite a complete checkpoint in ``save_dir``."""
    root = Path(save_dir)
    complete, partial = complete_tags(root), partial_checkpoints(root)
    source = load_dir or None
    if source is not None and not (Path(source) / MARKER).is_file():
        check_loadable(source)          # a wrong load_dir is named first, before any overwrite rule
    if source is None and auto_resume and complete:
        latest = read_latest(root)
        if latest is None or not (root / latest / MARKER).is_file():
            what = "has no 'latest' file" if latest is None else f"'latest' names '{latest}', which is not complete"
            log(f"{root} {what}: resuming from its newest complete checkpoint {complete[-1]}")
            source = str(root / complete[-1])
        else:
            source = str(root)
    if complete and source is None:
        how = "checkpoint.init_from starts a new stage" if init_from else \
            "checkpoint.auto_resume is false" if not auto_resume else "this run starts from scratch"
        raise CheckpointError(
            f"checkpoint.save_dir {root} already holds complete checkpoints ({', '.join(complete[-3:])}) "
            f"and {how}: saving would overwrite them. Resume them (checkpoint.auto_resume=true, no "
            f"checkpoint.load_dir) or set checkpoint.save_dir to a new directory")
    if complete and source is not None:
        resumed = _resumed_step(source)
        newer = [t for t in complete if step_of(t) > resumed]
        if newer:
            raise CheckpointError(
                f"checkpoint.save_dir {root} holds complete checkpoints newer than the one this run "
                f"resumes from ({', '.join(newer[-3:])}; {source} is at step {resumed}): saving would "
                f"overwrite them. Resume the newest (echo {complete[-1]} > {root / LATEST}), or set "
                f"checkpoint.save_dir to a new directory")
    if partial and not complete:
        log(f"note: {root} holds only an unfinished save ({', '.join(partial)}: a run stopped while "
            f"saving); it is ignored and replaced when this run saves that step")
    return source


def _resumed_step(path: str) -> int:
    p = Path(path)
    if (p / MARKER).is_file():
        return step_of(p.name)
    latest = read_latest(p) or (complete_tags(p) or [None])[-1]
    return step_of(latest) if latest else -1


def resume_dir(cfg: Config, log=lambda *_: None) -> Optional[str]:
    """Where this run resumes from: ``checkpoint.load_dir``, else (``checkpoint.auto_resume``) the
    save directory when it holds a complete checkpoint (its newest complete step when 'latest'
    is missing), else nowhere; CheckpointError when starting would overwrite a complete
    checkpoint (``start_point``)."""
    c = cfg.checkpoint
    return start_point(c.save_dir, c.load_dir, c.auto_resume, c.init_from, log)


def check_dir_writable(path: str, field: str) -> None:
    """Create ``path`` and write a probe file in it, or ConfigError naming the field."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{field} {p} is not writable ({exc.strerror or exc}); choose a directory "
                          f"this user can write") from None


def check_compatible(step_dir: Path, cfg: Config) -> bool:
    """The saved model must be this model; name every difference. -> whether the saved layout
    is this run's (else the checkpoint is resharded on load)."""
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
    if diffs:
        raise CheckpointError(f"{step_dir} holds a different model:\n  - " + "\n  - ".join(diffs)
                              + "\nload a checkpoint of this model or change the model config to match")
    return read_manifest(step_dir)["layout"] == layout_of(cfg)


def load_checkpoint(engine, cfg: Config, load_dir: str, log=print, weights_only: bool = False
                    ) -> Tuple[int, int]:
    """Resume (model, optimizer, scheduler, step, samples) from ``load_dir``'s latest complete
    checkpoint (or from ``load_dir`` itself when it is a step directory); ``weights_only``: only the model weights (a new training stage starts from them)."""
    ignored = partial_checkpoints(Path(load_dir))
    if ignored:
        log(f"ignoring incomplete checkpoint(s) in {load_dir}: {', '.join(ignored)} "
            f"(a save that did not finish)")
    step_dir = resolve_tag_dir(load_dir)
    same_layout = check_compatible(step_dir, cfg)
    start = time.time()
    if same_layout and read_manifest(step_dir).get("format") != CONSOLIDATED:
        save_dir, ds_tag = stage_location(step_dir)
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
        log(f"resharded {step_dir} (saved as {source.layout}) into this run's layout {layout_of(cfg)}"
            + ("" if weights_only else "; random states start from the seed"))
    log(f"loaded checkpoint {step_dir} in {time.time() - start:.2f} s")
    return int(client["step"]), int(client["consumed_samples"])


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
