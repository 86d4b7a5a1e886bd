"""Checkpoints as full, layout-free tensors: read any saved layout, load into any other.

A training checkpoint is DeepSpeed's shards of one layout (tensor x pipeline x data parallel, a
ZeRO stage). ``open_checkpoint`` reads it as *full* tensors per parameter name - the weight
(fp32 master copy where DeepSpeed keeps one) and Adam's ``exp_avg`` / ``exp_avg_sq`` - whatever
the layout was, or reads a consolidated checkpoint (tools/reshard_checkpoint.py), which stores
exactly those full tensors in safetensors files. ``load_full_state`` puts such tensors into a
live engine of *another* layout: it slices them for this rank's tensor-parallel part and ZeRO
partition and writes the weight, DeepSpeed's master copy and the optimizer state.

How DeepSpeed lays out its shards (deepspeed 0.19; the same rules its zero_to_fp32.py uses):
  - ZeRO-0: ``mp_rank_TT_model_states.pt`` holds the weights and the torch optimizer's state,
    indexed by position in the optimizer's parameter order.
  - ZeRO-1/2 (and bf16 without ZeRO): each data-parallel rank's optimizer file holds one slice of
    each parameter group flattened (``single_partition_of_fp32_groups`` and the same-shaped Adam
    state); the slices concatenate to the group, parameters in ``param_shapes`` order with
    ``param_alignment_paddings`` between them.
  - ZeRO-3: every parameter is split into ``ceil(numel / dp)`` pieces, one per data-parallel
    rank (the last padded); a rank's file holds its pieces of all parameters back to back.
Tensor-parallel parts are concatenated along the dimension the model split them
(``tensors.json``, written with every checkpoint: shape, split dimension, trainable).
Files are opened with ``mmap``: only the slices a parameter needs are read.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from .hf_io import SafetensorsDir, write_shards

KINDS = ("param", "exp_avg", "exp_avg_sq")
OPTIMIZER_KINDS = KINDS[1:]
TENSORS_FILE = "tensors.json"
CONSOLIDATED = "consolidated"          # complete.json "format" of a consolidated checkpoint


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
    from ..training.checkpoint import safe_load
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint does not hold every shard of its "
                              f"layout")
    return safe_load(str(path), mmap=True)


class _StageShard:
    """One (pipeline stage, tensor-parallel rank) of a DeepSpeed checkpoint, data-parallel
    shards merged: the tensors this tensor-parallel rank held, as ``kind`` -> name -> tensor."""

    def __init__(self, where: Path, tp_rank: int, dp: int, zero_stage: int, stage: dict):
        self.where, self.frozen, self.dp = where, {}, dp
        self.index: Dict[str, tuple] = {}        # name -> (flat group, start, numel, shape)
        self.flats: Dict[str, List[_Flat]] = {}
        self.steps: List[int] = []
        tt = f"mp_rank_{tp_rank:02d}"
        optim_files = sorted(where.glob(f"*zero_pp_rank_*_{tt}_optim_states.pt"))
        if zero_stage == 3:
            self._read_zero3(tt, dp)
        elif optim_files:
            self._read_flat_groups(tt, optim_files)
        else:
            self._read_plain(tt, stage)

    # ZeRO-0: the weights and the torch optimizer's own state
    def _read_plain(self, tt: str, stage: dict):
        model = _load(self.where / f"{tt}_model_states.pt")
        self.module, self.plain = model["module"], {}
        optim, order = model.get("optimizer"), stage.get("optimizer_order")
        if optim and "fp32_groups" in optim:       # bf16 without ZeRO: DeepSpeed's unfused optimizer
            self.unreadable = (f"{self.where}: the optimizer state of a bf16 run without ZeRO cannot be "
                               f"resharded (resume it in its saved layout, or start from its weights "
                               f"with checkpoint.init_from)")
        elif optim and order:
            for i, name in enumerate(order):
                if i in optim["state"]:
                    self.plain[name] = optim["state"][i]
                    self.steps.append(int(optim["state"][i]["step"]))

    # ZeRO-1/2: group slices per data-parallel rank, concatenated
    def _read_flat_groups(self, tt: str, optim_files: List[Path]):
        model = _load(self.where / f"{tt}_model_states.pt")
        self.module = model["module"]
        if len(optim_files) != self.dp:
            raise CheckpointError(f"{self.where} holds {len(optim_files)} optimizer shard(s) for "
                                  f"{tt}, its layout has {self.dp} data-parallel ranks")
        shards = [_load(f)["optimizer_state_dict"] for f in self._by_rank(optim_files)]
        first = shards[0]
        for kind in KINDS:
            self.flats[kind] = [
                _Flat([s["single_partition_of_fp32_groups"][g] if kind == "param"
                       else s["base_optimizer_state"]["state"][g][kind] for s in shards])
                for g in range(len(model["param_shapes"]))]
        paddings = first.get("param_alignment_paddings")
        for g, shapes in enumerate(model["param_shapes"]):
            offset = 0
            for j, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                self.index[name] = (g, offset, numel, tuple(shape))
                offset += numel + (paddings[g][j] if paddings else 0)
            self.steps.append(int(first["base_optimizer_state"]["state"][g]["step"]))

    # ZeRO-3: each parameter in dp pieces, a rank's pieces back to back
    def _read_zero3(self, tt: str, dp: int):
        models = [_load(self.where / f"zero_pp_rank_{d}_{tt}_model_states.pt") for d in range(dp)]
        optims = [_load(self.where / f"zero_pp_rank_{d}_{tt}_optim_states.pt")["optimizer_state_dict"]
                  for d in range(dp)]
        self.module = {}
        for name, shape in (models[0].get("frozen_param_shapes") or {}).items():
            full = torch.cat([m["frozen_param_fragments"][name].reshape(-1) for m in models])
            self.frozen[name] = full[:math.prod(shape)].view(tuple(shape))
        state = optims[0]["optimizer_state_dict"]["state"]
        self.zero3 = {kind: [_Flat(list(o["fp32_flat_groups"]) if kind == "param" else
                                   [o["optimizer_state_dict"]["state"][g][kind]
                                    for g in range(len(o["fp32_flat_groups"]))])
                             for o in optims] for kind in KINDS}
        offset = 0
        for shapes in models[0]["param_shapes"]:
            for name, shape in shapes.items():
                numel = math.prod(shape)
                part = -(-numel // dp)
                self.index[name] = (None, offset, numel, tuple(shape))
                offset += part
        self.steps = [int(s["step"]) for s in state.values()]

    @staticmethod
    def _by_rank(files: List[Path]) -> List[Path]:
        return sorted(files, key=lambda f: int(re.search(r"zero_pp_rank_(\d+)_", f.name).group(1)))

    def tensor(self, name: str, kind: str) -> Optional[torch.Tensor]:
        """This tensor-parallel rank's ``kind`` of ``name`` (None: not held, e.g. a frozen
        parameter's optimizer state)."""
        if name in self.index:
            g, start, numel, shape = self.index[name]
            if g is None:                                          # ZeRO-3
                part = -(-numel // self.dp)
                full = torch.cat([flat.read(start, part) for flat in self.zero3[kind]])
                return full[:numel].view(shape).float()
            return self.flats[kind][g].read(start, numel).view(shape).float()
        if kind != "param" and getattr(self, "unreadable", None):
            raise CheckpointError(self.unreadable)
        if hasattr(self, "plain") and name in self.plain:
            return (self.module[name] if kind == "param" else self.plain[name][kind]).float()
        if kind != "param":
            return None
        if name in self.frozen:
            return self.frozen[name].float()
        if name in self.module:
            return self.module[name].float()
        return None


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
        self._shards: Dict[tuple, _StageShard] = {}
        self._stage_of = {name: s for s, st in enumerate(self.stages) for name in st["params"]}
        self.lr_scheduler = client.get("lr_scheduler")
        self.tp, self.pp = tp, pp

    def _shard(self, stage: int, tp_rank: int) -> _StageShard:
        key = (stage, tp_rank)
        if key not in self._shards:
            where = self.step_dir if self.pp == 1 else self.step_dir / f"stage_{stage:02d}"
            self._shards[key] = _StageShard(where, tp_rank, self.layout["data_parallel"],
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


def open_checkpoint(path: str):
    """A checkpoint directory (with ``latest``) or a step directory of any layout or format ->
    an object with names(), shape(name), tensor(name, kind), optimizer_step(), client,
    config, layout, lr_scheduler."""
    import yaml
    from ..training.checkpoint import MODEL_FILE, read_manifest, resolve_tag_dir
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


# ------------------------------------------------------------------ into a live engine
def _local_part(full: torch.Tensor, p: torch.nn.Parameter, name: str, tp: int, tp_rank: int,
                log) -> torch.Tensor:
    """This rank's tensor-parallel part of ``full`` (vocabulary rows padded or cut when the
    padded vocabulary differs between the layouts)."""
    want, tp_dim = full_shape(p, tp)
    if list(full.shape) != want:
        if full.dim() == 2 and full.shape[1] == want[1] and tp_dim == 0 and name.endswith(
                ("embedding.weight", "output.weight")):
            rows = want[0]
            log(f"{name}: padded vocabulary {full.shape[0]} -> {rows} rows (the rows beyond the "
                f"tokenizer's vocabulary are padding; their logits still enter the softmax)")
            full = full[:rows] if full.shape[0] > rows else \
                torch.cat([full, full.new_zeros(rows - full.shape[0], full.shape[1])])
        else:
            raise CheckpointError(f"parameter {name}: the checkpoint holds shape {tuple(full.shape)}, "
                                  f"this model needs {tuple(want)}")
    if tp_dim is not None and tp > 1:
        full = full.chunk(tp, dim=tp_dim)[tp_rank]
    return full.contiguous()


@torch.no_grad()
def load_full_state(engine, source, weights_only: bool, dp_group, log=print) -> None:
    """Write ``source``'s full tensors into this rank's part of ``engine`` (any TP/PP/DP layout,
    any ZeRO stage): weights, DeepSpeed's fp32 master copies and, unless ``weights_only``, Adam's
    state, its step count and the learning-rate schedule. Every parameter of this rank must be
    in ``source``; a name or shape that does not match is reported, never skipped."""
    from megatron.core import parallel_state
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    module, opt = engine.module, engine.optimizer
    named = list(module.named_parameters())
    have = set(source.names())
    missing = [n for n, _ in named if n not in have]
    if missing:
        raise CheckpointError(f"{source.step_dir} has no tensor for {len(missing)} parameter(s) of "
                              f"this model: {', '.join(missing[:5])}")
    step = None if weights_only else source.optimizer_step()
    writer = _StateWriter(opt, dp_group, with_state=not weights_only and step is not None)
    for name, p in named:
        values = {}
        for kind in (KINDS if writer.with_state and p.requires_grad else ("param",)):
            full = source.tensor(name, kind)
            if full is None:
                raise CheckpointError(f"{source.step_dir} has no {kind} for {name} (was it frozen "
                                      f"when saved? then load it with checkpoint.init_from)")
            # a vocabulary resize is reported once, for the weight
            values[kind] = _local_part(full, p, name, tp, tp_rank, log if kind == "param" else (lambda *_: None))
        writer.write(p, values)
    writer.finish(step)
    if not weights_only:
        if source.lr_scheduler and engine.lr_scheduler is not None:
            engine.lr_scheduler.load_state_dict(source.lr_scheduler)
            # the optimizer's groups carry the lr of the next step (a scheduler only sets it
            # when it steps): as in an optimizer state dict, it comes with the checkpoint
            for group, lr in zip(opt.param_groups, engine.lr_scheduler.get_last_lr()):
                group["lr"] = lr
        engine.global_steps = int(source.client.get("global_steps") or source.client["step"])
        engine.global_samples = int(source.client.get("global_samples") or source.client["consumed_samples"])


class _StateWriter:
    """Writes one parameter's (data-parallel-full) tensors into whichever ZeRO stage holds it."""

    def __init__(self, opt, dp_group, with_state: bool):
        self.opt, self.with_state = opt, with_state
        self.dp, self.dp_rank = dist.get_world_size(dp_group), dist.get_rank(dp_group)
        self.base = getattr(opt, "optimizer", opt)           # the torch optimizer itself
        self.flats = (getattr(opt, "fp32_partitioned_groups_flat", None)          # ZeRO-3
                      or getattr(opt, "single_partition_of_fp32_groups", None)    # ZeRO-1/2
                      or getattr(opt, "fp32_groups_flat_partition", None))        # bf16, ZeRO-0
        self.zero3 = hasattr(opt, "fp32_partitioned_groups_flat")
        if self.flats is None and hasattr(opt, "fp32_groups"):
            raise CheckpointError(
                "loading another layout's checkpoint into a bf16 run without ZeRO is not supported "
                "(DeepSpeed's unfused optimizer keeps fp32 copies this loader does not fill): use "
                "parallel.zero_stage=1 or higher, or resume in the saved layout")
        if with_state and self.flats is not None:
            for flat in self.flats:
                self.base.state[flat] = {k: torch.zeros_like(flat) for k in OPTIMIZER_KINDS}

    def write(self, p: torch.nn.Parameter, values: Dict[str, torch.Tensor]) -> None:
        if self.zero3:
            self._write_zero3(p, values)
        elif self.flats is not None:                            # ZeRO-1/2: full lp + hp slice
            p.data.copy_(values["param"].to(p.dtype))
            mapping = getattr(p, "_hp_mapping", None)
            if mapping is not None:
                lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                flat = self.flats[mapping.param_group_index]
                for kind, value in values.items():
                    dest = flat if kind == "param" else self.base.state[flat][kind]
                    dest.narrow(0, hp.start, hp.numel).copy_(value.reshape(-1)[lp.start:lp.start + lp.numel])
        else:                                                   # no ZeRO: the torch optimizer's
            p.data.copy_(values["param"].to(p.dtype))
            if self.with_state and p.requires_grad:
                self.base.state[p] = {k: values[k].to(p.dtype).clone() for k in OPTIMIZER_KINDS}

    def _write_zero3(self, p: torch.nn.Parameter, values: Dict[str, torch.Tensor]) -> None:
        part = p.ds_tensor.ds_numel
        def piece(value):
            flat = value.reshape(-1)
            padded = torch.cat([flat, flat.new_zeros(part * self.dp - flat.numel())])
            return padded[self.dp_rank * part:(self.dp_rank + 1) * part]
        p.ds_tensor.data.copy_(piece(values["param"]).to(p.ds_tensor.dtype))
        if not p.requires_grad:
            return
        group, offset, numel = self.opt.grad_position[self.opt.get_param_id(p)]
        flat = self.flats[group]
        for kind, value in values.items():
            dest = flat if kind == "param" else self.base.state[flat][kind]
            dest.narrow(0, offset, numel).copy_(piece(value)[:numel])

    def finish(self, step: Optional[int]) -> None:
        if self.with_state:
            for state in self.base.state.values():
                state["step"] = torch.tensor(float(step))


@torch.no_grad()
def load_weights(module: torch.nn.Module, source, tp: int = 1, tp_rank: int = 0, log=print) -> None:
    """Copy ``source``'s weights into ``module`` (a whole model, e.g. for inference): every
    parameter must be there and every tensor of the checkpoint must be used."""
    named = dict(module.named_parameters())
    have = set(source.names())
    missing, extra = sorted(set(named) - have), sorted(have - set(named))
    if missing or extra:
        raise CheckpointError(
            f"{source.step_dir} does not fit the configured model (another size or vocabulary?): "
            + "; ".join(x for x in (f"missing {', '.join(missing[:4])}" if missing else "",
                                    f"not in the model {', '.join(extra[:4])}" if extra else "") if x))
    for name, p in named.items():
        p.data.copy_(_local_part(source.tensor(name, "param"), p, name, tp, tp_rank, log).to(p.dtype))


def write_consolidated(out_root: str, step_name: str, tensors: Iterable, manifest: dict,
                       config: dict, meta: dict, shard_bytes: int = 2 << 30, log=print,
                       tokenizer: Optional[str] = None) -> Path:
    """Write a consolidated checkpoint ``out_root/step_name`` (+ ``latest``) into a new or empty
    ``out_root`` (anything else is refused: it may hold another run's checkpoints): ``tensors`` yields
    (name, kind, full tensor) and is written in safetensors shards of at most ``shard_bytes``
    (one shard in memory at a time); ``meta`` (client state, lr schedule, optimizer step) goes
    to consolidated.json. Written under a temporary name and renamed when complete."""
    import yaml
    from ..training.checkpoint import write_atomic, write_manifest
    from ..training.safeguards import advance_latest, check_writable_target, store_tokenizer
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
