"""The on-disk format of a checkpoint directory: its file names, the manifest (``complete.json``),
atomic writes, safe loading (``weights_only``) and the per-stage parameter description
(``tensors.json``), the one writer of ``latest`` (``advance_latest``), the output-directory rule
of the writing tools (``check_writable_target``) and what a failed write says (``disk_errors``).
The save and resume protocol that uses them is save.py / resume.py, driven by manager.py.

Layout of a checkpoint directory::

    latest                      names the newest *complete* checkpoint (replaced atomically)
    step_0000100/
      complete.json             written last: step, samples, layout, and every file with its size
      config.yaml               the run's config
      tensors.json              every parameter's full shape and tensor-parallel split (resharding)
      rng/rank_NNNNN.pt         each rank's random-generator states
      mp_rank_00_model_states.pt, *_optim_states.pt ...   DeepSpeed's shards (one set per
      stage_SS/ ...                                        pipeline stage with pipeline parallelism)
    step_0000110.partial/       a save that did not finish (a killed rank): ignored, reported
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
from pathlib import Path
from typing import Iterator, List, Optional

import torch

from ..errors import CheckpointError

MARKER = "complete.json"
LATEST = "latest"
PARTIAL = ".partial"
MODEL_FILE = "mp_rank_00_model_states.pt"
TENSORS_FILE = "tensors.json"
CONSOLIDATED = "consolidated"          # complete.json "format" of a consolidated checkpoint
# DeepSpeed classes its optimizer shards pickle; everything else must be plain tensors/containers.
_SAFE_DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                           "deepspeed.runtime.zero.config.ZeroStageEnum",
                           "deepspeed.utils.tensor_fragment.fragment_address")


def write_atomic(path: Path, text: str) -> None:
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
    write_atomic(step_dir / MARKER, json.dumps({**fields, "files": files}, indent=1))


def step_of(tag: str) -> int:
    """``step_0000800`` (or ``step_0000800.partial``) -> 800; -1 for anything else."""
    try:
        return int(tag.split("_", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        return -1


def complete_tags(root: Path) -> List[str]:
    """Complete checkpoints under ``root``, oldest first (by step number: names stay ordered past
    seven digits); [] when ``root`` does not exist."""
    return sorted((p.name for p in Path(root).glob("step_*") if p.is_dir() and (p / MARKER).is_file()),
                  key=step_of)


def partial_checkpoints(root: Path) -> List[str]:
    return sorted(p.name for p in Path(root).glob(f"step_*{PARTIAL}"))


def read_latest(root: Path) -> Optional[str]:
    try:
        return (root / LATEST).read_text().strip() or None
    except OSError:
        return None


def advance_latest(root: Path, tag: str, write_atomic) -> bool:
    """Point ``root/latest`` at ``tag`` unless it already names a newer complete checkpoint
    (-> False). The one rule every writer of ``latest`` follows: it never moves backwards."""
    current = read_latest(root)
    if current is not None and step_of(current) > step_of(tag) and (root / current / MARKER).is_file():
        return False
    write_atomic(root / LATEST, tag)
    return True


def check_writable_target(out: str, flag: str = "--out") -> Path:
    """A writing tool's output directory: new, or empty (it never writes into another run's
    files). -> the path."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{flag} {p} exists and is a file: choose a new output directory")
    if p.is_dir() and any(p.iterdir()):
        held = sorted(x.name for x in p.iterdir())
        raise CheckpointError(f"{flag} {p} already exists and is not empty ({', '.join(held[:4])}"
                              f"{' ...' if len(held) > 4 else ''}): choose a new output directory "
                              f"(this tool never writes into or over another directory's files)")
    return p


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """An OS error while writing a checkpoint -> CheckpointError naming the directory and, for a
    full disk or quota, saying so (the unfinished save stays ``.partial`` and is ignored)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise CheckpointError(
            f"saving to {where} failed: " + ("the disk is full (no space left on device)" if full
                                            else f"{exc.strerror or exc}")
            + "; the previous complete checkpoint and 'latest' are untouched. "
            + ("Free space or set checkpoint.save_dir elsewhere (checkpoint.keep_last limits how many "
               "are kept), then resume" if full else "fix the directory, then resume")) from None


def check_loadable(load_dir: str) -> str:
    """Return the tag to load from ``load_dir`` or raise CheckpointError saying what is wrong."""
    root = Path(load_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist or is not a directory "
                              f"(checkpoint.load_dir)")
    latest = root / LATEST
    try:
        tag = latest.read_text().strip()
    except OSError as exc:
        complete, unfinished = complete_tags(root), partial_checkpoints(root)
        if complete:                           # 'latest' lost: the newest complete checkpoint
            return complete[-1]
        if unfinished:
            raise CheckpointError(f"{root} holds only an unfinished save ({', '.join(unfinished)}): the "
                                  f"run that wrote it stopped while saving, so there is no checkpoint "
                                  f"to load; load an older checkpoint or start without one") from None
        raise CheckpointError(f"{latest}: cannot read the 'latest' file ({exc.strerror}); is "
                              f"{root} a megatron_vist2 checkpoint directory?") from None
    step_dir = root / tag
    if not step_dir.is_dir():
        raise CheckpointError(f"{latest} names '{tag}', but {step_dir} is missing")
    verify_files(step_dir)
    return tag


def verify_files(step_dir: Path) -> dict:
    """Every file the manifest lists is there with its size; -> the manifest."""
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
    return manifest


def read_manifest(step_dir: Path) -> dict:
    marker = step_dir / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{step_dir} has no {MARKER}: the save did not finish (or the "
                              f"directory is not a megatron_vist2 checkpoint)")
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{marker} cannot be read ({exc})") from None


def resolve_tag_dir(path: str) -> Path:
    """A checkpoint directory (with ``latest``) or one of its step directories -> the step dir
    (its files checked against its manifest)."""
    p = Path(path)
    if (p / MARKER).is_file():
        verify_files(p)
        return p
    return p / check_loadable(path)


def safe_load(path: str, map_location=None, mmap: bool = False):
    classes = []
    for name in _SAFE_DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    try:
        with torch.serialization.safe_globals(classes):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:                  # truncated, corrupt, or pickled code
        raise CheckpointError(f"{path} cannot be loaded safely ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from None


# ------------------------------------------------------------------ what a checkpoint holds
def full_shape(p: torch.nn.Parameter, tp: int):
    """-> (the parameter's shape over all tensor-parallel ranks and ZeRO-3 partitions, the
    dimension tensor parallelism splits it along or None when every rank holds all of it)."""
    shape = list(getattr(p, "ds_shape", p.shape))
    tp_dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
    if tp_dim is not None:
        shape[tp_dim] *= tp
    return shape, tp_dim


def describe_stage(module: torch.nn.Module, optimizer, tp: int) -> dict:
    """This rank's pipeline stage for ``tensors.json``: every parameter's full shape, the
    dimension tensor parallelism splits it along (None: replicated), whether it trains, and the
    optimizer's parameter order when the optimizer holds the parameters themselves (no ZeRO)."""
    params = {}
    for name, p in module.named_parameters():
        shape, tp_dim = full_shape(p, tp)
        params[name] = {"shape": shape, "tp_dim": tp_dim, "trainable": p.requires_grad}
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names.get(id(p)) for g in getattr(optimizer, "param_groups", []) for p in g["params"]]
    return {"params": params, "optimizer_order": order if order and None not in order else None}
