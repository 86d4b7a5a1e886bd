"""Full tensors into a live model: ``load_full_state`` writes a ``CheckpointSource`` (any saved
layout, or a consolidated checkpoint) into this rank's part of a DeepSpeed engine of *another*
layout - it slices each tensor for this rank's tensor-parallel part and ZeRO partition and writes
the weight, DeepSpeed's master copy and the optimizer state; ``load_weights`` fills a plain module
(inference)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import TRAINING_AIDS, name_under
from ..errors import CheckpointError
from .format import full_shape
from .sources import KINDS, OPTIMIZER_KINDS, CheckpointSource


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
def load_full_state(engine, source: CheckpointSource, weights_only: bool, dp_group, log=print) -> None:
    """Write ``source``'s full tensors into this rank's part of ``engine`` (any TP/PP/DP layout,
    any ZeRO stage): weights, DeepSpeed's fp32 master copies and, unless ``weights_only``, Adam's
    state, its step count and the learning-rate schedule. Every parameter of this rank must be
    in ``source`` (``weights_only``: but for a training aid the source lacks, the OCR head or the
    reading cursor, which keeps its initialisation); a name or shape that does not match is reported, never skipped."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    module, opt = engine.module, engine.optimizer
    named = list(module.named_parameters())
    have = set(source.names())
    missing = [n for n, _ in named if n not in have]
    if weights_only:          # a new stage may add a training aid (the OCR head, the cursor): it starts fresh
        fresh = [n for n in missing if any(name_under(n, part) for part in TRAINING_AIDS.values())]
        missing = [n for n in missing if n not in fresh]
        named = [(n, p) for n, p in named if n not in fresh]
        if fresh:
            parts = sorted(p for p in TRAINING_AIDS.values() if any(name_under(n, p) for n in fresh))
            log(f"{source.step_dir} has no {', '.join(parts)}: its {len(fresh)} tensors keep their initialisation")
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
def load_weights(module: torch.nn.Module, source: CheckpointSource, tp: int = 1, tp_rank: int = 0, log=print) -> None:
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
