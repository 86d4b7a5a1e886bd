"""Reading a checkpoint of any layout as full, layout-free tensors.

A training checkpoint is DeepSpeed's shards of one layout (tensor x pipeline x data parallel, a
ZeRO stage). ``open_checkpoint`` reads it as *full* tensors per parameter name - the weight
(fp32 master copy where DeepSpeed keeps one) and Adam's ``exp_avg`` / ``exp_avg_sq`` - whatever
the layout was, or reads a consolidated checkpoint (tools/reshard_checkpoint.py, written by
``write_consolidated``), which stores exactly those full tensors in safetensors files. Both are a
``CheckpointSource``; checkpoint/reshard.py writes one into a live engine of another layout.

How DeepSpeed lays out its shards (deepspeed 0.19; the same rules its zero_to_fp32.py uses), one
reader class each:
  - ZeRO-0 (``_PlainShard``): ``mp_rank_TT_model_states.pt`` holds the weights and the torch
    optimizer's state, indexed by position in the optimizer's parameter order.
  - ZeRO-1/2 and bf16 without ZeRO (``_FlatGroupShard``): each data-parallel rank's optimizer
    file holds one slice of each parameter group flattened (``single_partition_of_fp32_groups``
    and the same-shaped Adam state); the slices concatenate to the group, parameters in
    ``param_shapes`` order with ``param_alignment_paddings`` between them.
  - ZeRO-3 (``_Zero3Shard``): every parameter is split into ``ceil(numel / dp)`` pieces, one per
    data-parallel rank (the last padded); a rank's file holds its pieces of all parameters back
    to back.
Tensor-parallel parts are concatenated along the dimension the model split them
(``tensors.json``, written with every checkpoint: shape, split dimension, trainable).
Files are opened with ``mmap``: only the slices a parameter needs are read.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Protocol

import torch
import yaml

from ..errors import CheckpointError
from .format import (CONSOLIDATED, MODEL_FILE, TENSORS_FILE, advance_latest, check_writable_target,
                     read_manifest, resolve_tag_dir, safe_load, write_atomic, write_manifest)
from .safetensors_io import SafetensorsDir, write_shards
from .tokenizer_record import store_tokenizer

KINDS = ("param", "exp_avg", "exp_avg_sq")
OPTIMIZER_KINDS = KINDS[1:]


class CheckpointSource(Protocol):
    """A saved checkpoint read as full tensors, whatever its layout or format."""
    step_dir: Path
    client: dict            # step, consumed_samples, tokenizer_sha256, global_steps/samples
    config: dict            # the run's config as saved (config.yaml)
    layout: Optional[dict]  # the layout it was saved in
    lr_scheduler: Optional[dict]

    def names(self) -> List[str]: ...

    def shape(self, name: str) -> tuple: ...

    def tensor(self, name: str, kind: str = "param") -> Optional[torch.Tensor]:
        """The full ``kind`` (one of KINDS) of ``name``; None when not held (a frozen
        parameter's optimizer state)."""

    def optimizer_step(self) -> Optional[int]: ...


class _Flat:
    """Several 1-D tensors read as one (the slices of a flattened group)."""

    def __init__(self, parts: List[torch.Tensor]):
        self.parts = parts
        self.starts = [0]
        for t in parts:
            self.starts.append(self.starts[-1] + t.numel())

    def read(self, start: int, numel: int) -> torch.Tensor:
        pieces, end = [], start + numel
        for t, lo, hi in zip(self.parts, self.starts, self.starts[1:]):
            if hi > start and lo < end:
                pieces.append(t.reshape(-1)[max(start, lo) - lo:min(end, hi) - lo])
        if sum(p.numel() for p in pieces) != numel:
            raise CheckpointError(f"a flattened optimizer group ends at {self.starts[-1]}, a "
                                  f"parameter needs [{start}, {end}): the shards do not match "
                                  f"their param_shapes")
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint does not hold every shard of its "
                              f"layout")
    return safe_load(str(path), mmap=True)


def _by_rank(files: List[Path]) -> List[Path]:
    return sorted(files, key=lambda f: int(re.search(r"zero_pp_rank_(\d+)_", f.name).group(1)))


# ------------------------------------------------------------------ one (stage, TP rank) of a layout
class ShardReader(Protocol):
    """The tensors one tensor-parallel rank of one pipeline stage held, data-parallel shards
    merged; one class per DeepSpeed layout below."""
    steps: List[int]        # the optimizer step count of each group it read

    def tensor(self, name: str, kind: str) -> Optional[torch.Tensor]:
        """This rank's ``kind`` of ``name``; None when not held (a frozen parameter's optimizer
        state)."""


class _PlainShard:
    """ZeRO-0: the weights and the torch optimizer's own state."""

    def __init__(self, where: Path, tt: str, stage: dict):
        model = _load(where / f"{tt}_model_states.pt")
        self.module, self.state, self.steps, self.unreadable = model["module"], {}, [], None
        optim, order = model.get("optimizer"), stage.get("optimizer_order")
        if optim and "fp32_groups" in optim:       # bf16 without ZeRO: DeepSpeed's unfused optimizer
            self.unreadable = (f"{where}: the optimizer state of a bf16 run without ZeRO cannot be "
                               f"resharded (resume it in its saved layout, or start from its weights "
                               f"with checkpoint.init_from)")
        elif optim and order:
            for i, name in enumerate(order):
                if i in optim["state"]:
                    self.state[name] = optim["state"][i]
                    self.steps.append(int(optim["state"][i]["step"]))

    def tensor(self, name: str, kind: str) -> Optional[torch.Tensor]:
        if kind == "param":
            return self.module[name].float() if name in self.module else None
        if self.unreadable:
            raise CheckpointError(self.unreadable)
        return self.state[name][kind].float() if name in self.state else None


class _FlatGroupShard:
    """ZeRO-1/2: group slices per data-parallel rank, concatenated."""

    def __init__(self, where: Path, tt: str, dp: int, optim_files: List[Path]):
        model = _load(where / f"{tt}_model_states.pt")
        self.module = model["module"]               # frozen parameters are only here
        self.index: Dict[str, tuple] = {}           # name -> (group, start, numel, shape)
        self.steps: List[int] = []
        if len(optim_files) != dp:
            raise CheckpointError(f"{where} holds {len(optim_files)} optimizer shard(s) for "
                                  f"{tt}, its layout has {dp} data-parallel ranks")
        shards = [_load(f)["optimizer_state_dict"] for f in _by_rank(optim_files)]
        first = shards[0]
        self.flats = {kind: [_Flat([s["single_partition_of_fp32_groups"][g] if kind == "param"
                                    else s["base_optimizer_state"]["state"][g][kind] for s in shards])
                             for g in range(len(model["param_shapes"]))] for kind in KINDS}
        paddings = first.get("param_alignment_paddings")
        for g, shapes in enumerate(model["param_shapes"]):
            offset = 0
            for j, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                self.index[name] = (g, offset, numel, tuple(shape))
                offset += numel + (paddings[g][j] if paddings else 0)
            self.steps.append(int(first["base_optimizer_state"]["state"][g]["step"]))

    def tensor(self, name: str, kind: str) -> Optional[torch.Tensor]:
        if name in self.index:
            g, start, numel, shape = self.index[name]
            return self.flats[kind][g].read(start, numel).view(shape).float()
        if kind == "param" and name in self.module:
            return self.module[name].float()
        return None


class _Zero3Shard:
    """ZeRO-3: each parameter in dp pieces, a rank's pieces back to back."""

    def __init__(self, where: Path, tt: str, dp: int):
        self.dp = dp
        models = [_load(where / f"zero_pp_rank_{d}_{tt}_model_states.pt") for d in range(dp)]
        optims = [_load(where / f"zero_pp_rank_{d}_{tt}_optim_states.pt")["optimizer_state_dict"]
                  for d in range(dp)]
        self.frozen: Dict[str, torch.Tensor] = {}
        for name, shape in (models[0].get("frozen_param_shapes") or {}).items():
            full = torch.cat([m["frozen_param_fragments"][name].reshape(-1) for m in models])
            self.frozen[name] = full[:math.prod(shape)].view(tuple(shape))
        state = optims[0]["optimizer_state_dict"]["state"]
        # a checkpoint saved before the first optimizer step has weights but no Adam state
        stepped = all(o["optimizer_state_dict"]["state"] for o in optims)
        self.flats = {kind: [_Flat(list(o["fp32_flat_groups"]) if kind == "param" else
                                   [o["optimizer_state_dict"]["state"][g][kind]
                                    for g in range(len(o["fp32_flat_groups"]))])
                             for o in optims] for kind in KINDS if kind == "param" or stepped}
        self.index: Dict[str, tuple] = {}           # name -> (start, numel, shape)
        offset = 0
        for shapes in models[0]["param_shapes"]:
            for name, shape in shapes.items():
                numel = math.prod(shape)
                self.index[name] = (offset, numel, tuple(shape))
                offset += -(-numel // dp)
        self.steps = [int(s["step"]) for s in state.values()]

    def tensor(self, name: str, kind: str) -> Optional[torch.Tensor]:
        if name in self.index and kind in self.flats:
            start, numel, shape = self.index[name]
            part = -(-numel // self.dp)
            full = torch.cat([flat.read(start, part) for flat in self.flats[kind]])
            return full[:numel].view(shape).float()
        if kind == "param" and name in self.frozen:
            return self.frozen[name].float()
        return None


def _open_shard(where: Path, tp_rank: int, dp: int, zero_stage: int, stage: dict) -> ShardReader:
    """The reader for one (pipeline stage, tensor-parallel rank) of a DeepSpeed checkpoint."""
    tt = f"mp_rank_{tp_rank:02d}"
    if zero_stage == 3:
        return _Zero3Shard(where, tt, dp)
    optim_files = sorted(where.glob(f"*zero_pp_rank_*_{tt}_optim_states.pt"))
    if optim_files:
        return _FlatGroupShard(where, tt, dp, optim_files)
    return _PlainShard(where, tt, stage)


# ------------------------------------------------------------------ whole checkpoints
class ShardedCheckpoint:
    """A complete checkpoint step directory of any layout, read as full tensors."""

    def __init__(self, step_dir: Path, manifest: dict, config: dict, client: dict):
        self.step_dir, self.manifest, self.config, self.client = step_dir, manifest, config, client
        layout = manifest["layout"]
        self.layout = layout
        described = step_dir / TENSORS_FILE
        if not described.is_file():
            raise CheckpointError(
                f"{step_dir} has no {TENSORS_FILE} (saved by an older version): it can only be "
                f"resumed in the layout it was saved with, {layout}")
        self.stages = json.loads(described.read_text())["stages"]
        tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
        self._shards: Dict[tuple, ShardReader] = {}
        self._stage_of = {name: s for s, st in enumerate(self.stages) for name in st["params"]}
        self.lr_scheduler = client.get("lr_scheduler")
        self.tp, self.pp = tp, pp

    def _shard(self, stage: int, tp_rank: int) -> ShardReader:
        key = (stage, tp_rank)
        if key not in self._shards:
            where = self.step_dir if self.pp == 1 else self.step_dir / f"stage_{stage:02d}"
            self._shards[key] = _open_shard(where, tp_rank, self.layout["data_parallel"],
                                            self.layout["zero_stage"], self.stages[stage])
        return self._shards[key]

    def names(self) -> List[str]:
        return list(self._stage_of)

    def shape(self, name: str) -> tuple:
        return tuple(self.stages[self._stage_of[name]]["params"][name]["shape"])

    def tensor(self, name: str, kind: str = "param") -> Optional[torch.Tensor]:
        if name not in self._stage_of:
            return None
        stage = self._stage_of[name]
        tp_dim = self.stages[stage]["params"][name]["tp_dim"]
        ranks = range(self.tp) if tp_dim is not None else [0]
        parts = [self._shard(stage, t).tensor(name, kind) for t in ranks]
        if any(p is None for p in parts):
            return None
        return torch.cat(parts, dim=tp_dim) if len(parts) > 1 else parts[0]

    def optimizer_step(self) -> Optional[int]:
        steps = {s for stage in range(self.pp) for t in range(self.tp) for s in self._shard(stage, t).steps}
        if len(steps) > 1:
            raise CheckpointError(f"{self.step_dir}: optimizer groups at different steps {sorted(steps)}")
        return steps.pop() if steps else None


class ConsolidatedCheckpoint:
    """A consolidated checkpoint (tools/reshard_checkpoint.py): full tensors in safetensors files
    named ``<kind>/<parameter>``, opened lazily."""

    def __init__(self, step_dir: Path, manifest: dict, config: dict):
        self.step_dir, self.manifest, self.config = step_dir, manifest, config
        meta = json.loads((step_dir / "consolidated.json").read_text())
        self.client, self.lr_scheduler = meta["client"], meta.get("lr_scheduler")
        self.layout, self._step = manifest["layout"], meta.get("optimizer_step")
        self._files = SafetensorsDir(str(step_dir))
        self._names = list(meta["parameters"])
        self._shapes = {n: tuple(s) for n, s in meta["parameters"].items()}

    def names(self) -> List[str]:
        return self._names

    def shape(self, name: str) -> tuple:
        return self._shapes[name]

    def tensor(self, name: str, kind: str = "param") -> Optional[torch.Tensor]:
        key = f"{kind}/{name}"
        return self._files.get(key).float() if key in self._files else None

    def optimizer_step(self) -> Optional[int]:
        return self._step


def open_checkpoint(path: str) -> CheckpointSource:
    """A checkpoint directory (with ``latest``) or a step directory of any layout or format ->
    its ``CheckpointSource``."""
    step_dir = resolve_tag_dir(path)
    manifest = read_manifest(step_dir)
    config = yaml.safe_load((step_dir / "config.yaml").read_text())
    if manifest.get("format") == CONSOLIDATED:
        return ConsolidatedCheckpoint(step_dir, manifest, config)
    first = step_dir / ("stage_00" if manifest["layout"]["pipeline_parallel"] > 1 else ".")
    model_file = first / MODEL_FILE
    if not model_file.is_file():
        model_file = first / f"zero_pp_rank_0_{MODEL_FILE}"
    head = _load(model_file)
    client = {k: head.get(k) for k in ("step", "consumed_samples", "tokenizer_sha256")}
    client["lr_scheduler"] = head.get("lr_scheduler")
    client["global_steps"] = head.get("global_steps")
    client["global_samples"] = head.get("global_samples")
    return ShardedCheckpoint(step_dir, manifest, config, client)


def write_consolidated(out_root: str, step_name: str, tensors: Iterable, manifest: dict,
                       config: dict, meta: dict, shard_bytes: int = 2 << 30, log=print,
                       tokenizer: Optional[str] = None) -> Path:
    """Write a consolidated checkpoint ``out_root/step_name`` (+ ``latest``) into a new or empty
    ``out_root`` (anything else is refused: it may hold another run's checkpoints): ``tensors`` yields
    (name, kind, full tensor) and is written in safetensors shards of at most ``shard_bytes``
    (one shard in memory at a time); ``meta`` (client state, lr schedule, optimizer step) goes
    to consolidated.json. Written under a temporary name and renamed when complete."""
    root = check_writable_target(out_root)     # never into another run's checkpoints
    final, tmp = root / step_name, root / f"{step_name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    shapes = {}

    def keyed():
        for name, kind, t in tensors:
            if kind == "param":
                shapes[name] = list(t.shape)
            yield f"{kind}/{name}", t
    write_shards(keyed(), tmp, shard_bytes, lambda n: f"state-{n:05d}.safetensors", log)
    (tmp / "consolidated.json").write_text(json.dumps({**meta, "parameters": shapes}, indent=1))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    stored = store_tokenizer(tmp, tokenizer) if tokenizer else {}    # tools find it from anywhere
    write_manifest(tmp, **{**manifest, **stored, "format": CONSOLIDATED})
    tmp.rename(final)
    advance_latest(root, step_name, write_atomic)
    return final
