"""Checkpoints: DeepSpeed writes each rank's shards, we make the whole atomic.

Layout of ``checkpoint.save_dir``::

    latest                      names the newest *complete* checkpoint (replaced atomically)
    step_0000100/
      complete.json             written last: step, samples, layout, and every file with its size
      config.yaml               the run's config
      mp_rank_00_model_states.pt, *_optim_states.pt ...   DeepSpeed's shards (one set per
      stage_SS/ ...                                        pipeline stage with pipeline parallelism)
    step_0000110.partial/       a save that did not finish (a killed rank): ignored, reported

Protocol: every rank writes its shards into ``<tag>.partial``; after a barrier rank 0 writes
``complete.json``, renames the directory to ``<tag>``, replaces ``latest`` and removes the oldest
checkpoints beyond ``checkpoint.keep_last``. A crash at any point leaves the previous complete
checkpoint and ``latest`` untouched. Loading checks the marker, every file's size, the model
config and the layout before DeepSpeed reads anything, and reads with ``weights_only``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state

from ..config import Config, config_to_dict
from ..errors import CheckpointError

MARKER = "complete.json"
PARTIAL = ".partial"
MODEL_FILE = "mp_rank_00_model_states.pt"
# DeepSpeed classes its optimizer shards pickle; everything else must be plain tensors/containers.
_SAFE_DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                           "deepspeed.runtime.zero.config.ZeroStageEnum",
                           "deepspeed.utils.tensor_fragment.fragment_address")


# Model settings that do not change the weights: a run may resume with other values.
_FREE_TO_CHANGE = {"model.llm.hidden_dropout", "model.llm.attention_dropout", "model.attention_backend"}


def _layout(cfg: Config) -> Dict[str, int]:
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    p = cfg.parallel
    return {"tensor_parallel": p.tensor_parallel, "pipeline_parallel": p.pipeline_parallel,
            "data_parallel": world // (p.tensor_parallel * p.pipeline_parallel),
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_manifest(step_dir: Path, **fields) -> None:
    """Mark ``step_dir`` complete: ``fields`` plus every file in it with its size (written last)."""
    files = {str(f.relative_to(step_dir)): f.stat().st_size
             for f in sorted(step_dir.rglob("*")) if f.is_file() and f.name != MARKER}
    _write_atomic(step_dir / MARKER, json.dumps({**fields, "files": files}, indent=1))


def complete_tags(root: Path) -> List[str]:
    """Complete checkpoints under ``root``, oldest first."""
    return sorted(p.name for p in root.glob("step_*") if (p / MARKER).is_file() and p.is_dir())


def save_checkpoint(engine, cfg: Config, step: int, consumed_samples: int,
                    tokenizer_sha256: str, log=print) -> str:
    root = Path(cfg.checkpoint.save_dir)
    tag = f"step_{step:07d}"
    partial, final = root / f"{tag}{PARTIAL}", root / tag
    start = time.time()
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)          # left by an earlier crash
    dist.barrier()
    save_dir, ds_tag = _stage_location(partial)
    engine.save_checkpoint(str(save_dir), tag=ds_tag, save_latest=False,
                           client_state={"step": step, "consumed_samples": consumed_samples,
                                         "config": config_to_dict(cfg),
                                         "tokenizer_sha256": tokenizer_sha256})
    _fault_injection(step)
    dist.barrier()                             # every rank has written its shards
    if dist.get_rank() == 0:
        (partial / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        write_manifest(partial, step=step, consumed_samples=consumed_samples, layout=_layout(cfg),
                       tokenizer_sha256=tokenizer_sha256)
        if final.exists():                     # the same step saved again (e.g. a rerun)
            shutil.rmtree(final)
        partial.rename(final)
        _write_atomic(root / "latest", tag)
        size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        log(f"saved checkpoint {final} ({size / 2 ** 20:,.1f} MiB) in {time.time() - start:.2f} s")
        keep = cfg.checkpoint.keep_last
        for old in (complete_tags(root)[:-keep] if keep > 0 else []):
            if old != tag:
                shutil.rmtree(root / old)
                log(f"removed old checkpoint {root / old} (checkpoint.keep_last={keep})")
    dist.barrier()
    return str(final)


def partial_checkpoints(root: Path) -> List[str]:
    return sorted(p.name for p in Path(root).glob(f"step_*{PARTIAL}"))


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
    step_dir = root / tag
    if not step_dir.is_dir():
        raise CheckpointError(f"{latest} names '{tag}', but {step_dir} is missing")
    manifest = read_manifest(step_dir)
    for name, size in manifest["files"].items():
        f = step_dir / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {step_dir / MARKER}); the checkpoint "
                                  f"is damaged: restore it or load an older one")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes but was written with {size} "
                                  f"(truncated or replaced); the checkpoint is damaged: restore it "
                                  f"or load an older one")
    return tag


def read_manifest(step_dir: Path) -> dict:
    marker = step_dir / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{step_dir} has no {MARKER}: the save did not finish (or the "
                              f"directory is not a megatron_vist2 checkpoint)")
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{marker} cannot be read ({exc})") from None


def check_compatible(step_dir: Path, cfg: Config) -> None:
    """The saved model must be this model, in this layout; name every difference."""
    saved = yaml.safe_load((step_dir / "config.yaml").read_text())
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
    layout, now = read_manifest(step_dir)["layout"], _layout(cfg)
    if layout != now:
        raise CheckpointError(
            f"{step_dir} was saved with layout {layout}, this run is {now}; resuming in another "
            f"layout (resharding) is not supported yet: resume with the saved layout")


def _safe_load(path: str, map_location=None):
    import importlib
    classes = []
    for name in _SAFE_DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    try:
        with torch.serialization.safe_globals(classes):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:                  # truncated, corrupt, or pickled code
        raise CheckpointError(f"{path} cannot be loaded safely ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from None


def load_checkpoint(engine, cfg: Config, load_dir: str, log=print, weights_only: bool = False
                    ) -> Tuple[int, int]:
    """Resume (model, optimizer, scheduler, step, samples) from ``load_dir``'s latest complete
    checkpoint; ``weights_only``: only the model weights (a new training stage starts from them)."""
    root = Path(load_dir)
    ignored = partial_checkpoints(root)
    if ignored:
        log(f"ignoring incomplete checkpoint(s) in {root}: {', '.join(ignored)} "
            f"(a save that did not finish)")
    tag = check_loadable(load_dir)
    check_compatible(root / tag, cfg)
    save_dir, ds_tag = _stage_location(root / tag)
    start = time.time()
    engine.checkpoint_engine.load = _safe_load   # DeepSpeed's own reader uses weights_only=False
    path, client = engine.load_checkpoint(str(save_dir), tag=ds_tag, load_module_only=weights_only,
                                          load_optimizer_states=not weights_only,
                                          load_lr_scheduler_states=not weights_only)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {save_dir / ds_tag}")
    log(f"loaded checkpoint {root / tag} in {time.time() - start:.2f} s")
    return int(client["step"]), int(client["consumed_samples"])


def resume_dir(cfg: Config) -> Optional[str]:
    """Where this run resumes from: ``checkpoint.load_dir``, else (``checkpoint.auto_resume``) the
    save directory when it holds a complete checkpoint, else nowhere."""
    if cfg.checkpoint.load_dir:
        return cfg.checkpoint.load_dir
    root = Path(cfg.checkpoint.save_dir)
    if cfg.checkpoint.auto_resume and (root / "latest").is_file():
        return str(root)
    return None


def resolve_tag_dir(path: str) -> Path:
    """A checkpoint directory (with ``latest``) or one of its step directories -> the step dir."""
    p = Path(path)
    if (p / MARKER).is_file():
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
    state = _safe_load(str(file), map_location="cpu")
    if state.get("mp_world_size", 1) != 1:
        raise CheckpointError(f"{file}: tensor-parallel checkpoints (mp_world_size "
                              f"{state['mp_world_size']}) are not readable here yet")
    return tag_dir, state
