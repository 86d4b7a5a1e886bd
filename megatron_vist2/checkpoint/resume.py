"""Where a run starts and how it resumes.

- ``start_point`` / ``resume_dir``: where a run starts, given ``checkpoint.save_dir``'s contents.
  A save directory with complete checkpoints is resumed from (its ``latest``, or the newest
  complete step when ``latest`` is missing) or refused: a new run never overwrites a complete
  checkpoint.
- ``check_compatible``: the saved model must be this model (every differing field named), and a
  resume must be able to apply this run's optimizer settings.
- ``schedule_changes`` / ``apply_schedule``: a resume continues the checkpoint's optimizer and
  learning-rate schedule, except the ``optim.*`` and ``train.steps`` fields this run changes:
  those apply from the resumed step on, named in the log with the learning rate the run uses.
  A change that regroups the parameters (``optim.lr_multipliers``, weight decay to or from 0)
  is refused with the way to start a new schedule from the weights (``checkpoint.init_from``).
- ``load_checkpoint``: the saved layout goes to DeepSpeed (random states restored: bit-exact);
  another layout, or a consolidated checkpoint, is resharded (reshard.py), optimizer included.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import TRAINING_AIDS, Config, config_to_dict, name_under
from ..errors import CheckpointError
from ..parallel import compat
from .format import (CONSOLIDATED, LATEST, MARKER, check_loadable, complete_tags, partial_checkpoints,
                     read_config_yaml, read_latest, read_manifest, resolve_tag_dir, safe_load, step_of)
from .reshard import load_full_state
from .save import layout_of, stage_location
from .sources import open_checkpoint

# Model settings that do not change the weights: a run may resume with other values.
_FREE_TO_CHANGE = {"model.llm.hidden_dropout", "model.llm.attention_dropout", "model.attention_backend",
                   "model.render.min_legible_advance"}   # the renderer only warns by it


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


def _saved_config(step_dir: Path) -> dict:
    from ..config import recorded_config
    # through the dataclasses: a field added since the save compares as its default
    path = step_dir / "config.yaml"
    return config_to_dict(recorded_config(read_config_yaml(step_dir), path))


def _differences(a, b, path: str) -> List[Tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)]
    return [] if a == b else [(path, a, b)]


def schedule_changes(saved: dict, cfg: Config) -> List[Tuple[str, object, object]]:
    """The optimizer and schedule fields (``optim.*``, ``train.steps``: the cosine's length) this
    run sets otherwise than the checkpoint's config -> (field, saved, ours)."""
    ours = config_to_dict(cfg)
    fields = [(f"optim.{k}", saved["optim"].get(k), ours["optim"].get(k)) for k in ours["optim"]]
    return [(f, a, b) for f, a, b in fields + [("train.steps", saved["train"]["steps"], ours["train"]["steps"])]
            if a != b]


def _regrouping(changes) -> List[str]:
    """Changes a resume cannot apply: they regroup the parameters (groups are keyed by weight decay
    zero or not and lr multiplier, optim.py), and the saved optimizer state is kept per group."""
    out = []
    for field, old, new in changes:
        if field == "optim.lr_multipliers" or (field == "optim.weight_decay" and (old == 0) != (new == 0)):
            out.append(f"{field}: checkpoint {old!r}, this run {new!r}")
    return out


def _new_schedule_hint(step_dir: Path) -> str:
    return (f"checkpoint.init_from={step_dir} with a new checkpoint.save_dir (these weights, a new optimizer "
            f"state and the schedule from step 0)")


def check_compatible(step_dir: Path, cfg: Config, weights_only: bool = False, log=None) -> bool:
    """The saved model must be this model; name every difference. A resume (not ``weights_only``,
    a new stage's ``init_from``) must also be able to apply this run's optimizer settings (a
    change that regroups the parameters is refused by name). ``weights_only``: the training aids
    (config/derived.py ``TRAINING_AIDS``: the OCR head, the reading cursor) may differ: one the
    checkpoint lacks starts from its initialisation, one this run lacks is left behind (through
    the reshard path); and a control (``model.context`` text or window) may start from a VIST2
    model's weights: the same LLM, its vision encoder and aligner left behind (controls trained
    from the same stage as the model they are compared with; said through ``log`` when given).
    -> whether the saved layout is this run's (else the checkpoint is resharded on load)."""
    saved = _saved_config(step_dir)
    diffs = [f"{f}: checkpoint {a!r}, this run {b!r}" for f, a, b in
             _differences(saved["model"], config_to_dict(cfg)["model"], "model") if f not in _FREE_TO_CHANGE]
    aid_changed = any(_of_aid(d) for d in diffs)
    control = weights_only and _control_from_model(saved, cfg)
    if weights_only:
        diffs = [d for d in diffs if not _of_aid(d) and not (control and d.startswith("model.context:"))]
    if diffs:
        raise CheckpointError(f"{step_dir} holds a different model:\n  - " + "\n  - ".join(diffs)
                              + "\nload a checkpoint of this model, change the model config to match, or train this "
                              "model into another checkpoint.save_dir (the checkpoints there are kept)")
    if control and log is not None:
        log(f"{step_dir} holds a VIST2 model: this {cfg.model.context} control starts from its LLM "
            f"(embedding, layers, head); its vision encoder and aligner are left behind")
    regrouped = _regrouping(schedule_changes(saved, cfg)) if not weights_only else []
    if regrouped:
        raise CheckpointError(
            f"resuming {step_dir} with another optimizer grouping:\n  - " + "\n  - ".join(regrouped)
            + "\nthe saved optimizer state is kept per parameter group, so a resume cannot apply this. "
            "Resume with the checkpoint's values, or start a new schedule from its weights: "
            + _new_schedule_hint(step_dir))
    return read_manifest(step_dir)["layout"] == layout_of(cfg) and not aid_changed and not control


def _control_from_model(saved: dict, cfg: Config) -> bool:
    """Does a control (model.context text / window) start from a VIST2 model's weights?"""
    return saved["model"]["context"] == "vist2" and cfg.model.context != "vist2"


def _of_aid(difference: str) -> bool:
    """Is a config difference (``"field: checkpoint .., this run .."``) one of a training aid's?"""
    return any(name_under(difference.split(":")[0], field) for field in TRAINING_AIDS)


def load_checkpoint(engine, cfg: Config, load_dir: str, log=print, weights_only: bool = False
                    ) -> Tuple[int, int]:
    """Resume (model, optimizer, scheduler, step, samples) from ``load_dir``'s latest complete
    checkpoint (or from ``load_dir`` itself when it is a step directory); ``weights_only``: only
    the model weights (a new training stage starts from them). A resume continues the saved
    optimizer and learning-rate schedule, except the fields this run changes, which apply from
    the resumed step on (``apply_schedule``); the log says which learning rate the run uses and
    where it comes from."""
    ignored = partial_checkpoints(Path(load_dir))
    if ignored:
        log(f"ignoring incomplete checkpoint(s) in {load_dir}: {', '.join(ignored)} "
            f"(a save that did not finish)")
    step_dir = resolve_tag_dir(load_dir)
    same_layout = check_compatible(step_dir, cfg, weights_only, log)
    ours = _this_runs_schedule(engine)
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
    step = int(client["step"])
    if not weights_only:
        changes = schedule_changes(_saved_config(step_dir), cfg)
        if changes and ours is not None:
            apply_schedule(engine, ours)
        log(f"learning rate {engine.get_lr()[0]:.4g} at step {step}: " + (
            f"this run's optim.* and train.steps, applied from the resumed step (changed since "
            f"{step_dir.name}: " + "; ".join(f"{f} {a!r} -> {b!r}" for f, a, b in changes) + "); Adam's "
            "moments and step count are the checkpoint's. To restart the schedule instead: "
            + _new_schedule_hint(step_dir) if changes else
            f"the schedule of {step_dir}, continued (optim.* and train.steps as saved)"))
    return step, int(client["consumed_samples"])


def _this_runs_schedule(engine):
    """This run's base learning rates and group hyper-parameters (before a load replaces them)."""
    sched = getattr(engine, "lr_scheduler", None)
    if sched is None:
        return None
    return list(sched.base_lrs), [{k: g[k] for k in ("betas", "eps", "weight_decay")}
                                  for g in sched.optimizer.param_groups]


def apply_schedule(engine, ours) -> None:
    """This run's schedule and optimizer hyper-parameters at the loaded schedule position (the
    count of applied steps): base learning rates, betas, eps and weight decay from ``ours``,
    each group's learning rate recomputed from this run's schedule."""
    sched = engine.lr_scheduler
    bases, hyper = ours
    if len(bases) != len(sched.base_lrs):
        raise CheckpointError(f"the checkpoint's optimizer has {len(sched.base_lrs)} parameter groups, this "
                              f"run's {len(bases)}: it cannot be resumed with this run's optimizer settings")
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(bases, sched.lr_lambdas)]
    state = sched.state_dict()
    state.update(base_lrs=bases, _last_lr=lrs)            # through the public state dict
    sched.load_state_dict(state)
    for group, h, base, lr in zip(sched.optimizer.param_groups, hyper, bases, lrs):
        group.update(h, initial_lr=base, lr=lr)


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
