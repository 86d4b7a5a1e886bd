"""Held-out loss on identical targets, in the launcher's layout (one process, or TP/PP/DP
ranks): the trainer's model, engine and pipeline schedule (training/trainer.py), the checkpoint
read into that layout whatever layout it was saved in (checkpoint/resume.py), and the
per-target statistics of metrics/targets.py as the schedule's loss function.

The rows are the held-out set packed by the *model's* config without read-back chunks (every
chunk's text is predicted from the history only); each control is scored on those same rows.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import Config, apply_overrides, config_from_dict, data_parallel_size, validate
from ..data.dataset import build_dataset
from ..data.tokenizer import Tokenizer
from ..parallel.distributed import DistEnv
from ..metrics.targets import chunk_bins, new_stats, summarize, target_loss_fn


def eval_config(saved: dict, tp: int, pp: int, world_size: int, micro_batch: int, overrides=()) -> Config:
    """A checkpoint's config, run in the evaluation's layout: tp x pp from the flags, the rest of
    the ranks data-parallel, ZeRO off (the weights are read whole into any layout)."""
    data = apply_overrides(dict(saved), list(overrides))
    dp = max(1, world_size // (tp * pp))
    data["parallel"] = {**data.get("parallel", {}), "tensor_parallel": tp, "pipeline_parallel": pp,
                        "sequence_parallel": False, "zero_stage": 0, "micro_batch_size": micro_batch,
                        "global_batch_size": micro_batch * dp}
    data["checkpoint"] = {**data.get("checkpoint", {}), "load_dir": "", "init_from": "", "auto_resume": False}
    data["train"] = {**data.get("train", {}), "freeze": []}
    return validate(config_from_dict(data), world_size)


def rows_config(cfg: Config) -> Config:
    """The held-out rows: the model's packing without read-back chunks."""
    return replace(cfg, data=replace(cfg.data, readback_fraction=0.0, readback_schedule=[]))


def heldout_dataset(rows_cfg: Config, tokenizer: Tokenizer, batches: int, context: str = "vist2"):
    """The held-out rows as ``context`` sees them (the controls: the same rows without images)."""
    rows_cfg = replace(rows_cfg, model=replace(rows_cfg.model, context=context))
    return build_dataset(rows_cfg.data.valid_prefix, tokenizer, rows_cfg, rows_cfg.train.seed + 1000,
                         batches * rows_cfg.parallel.global_batch_size)


def score(cfg: Config, step_dir: str, env: DistEnv, dataset, rows_cfg: Config, batches: int, log) -> Dict:
    """Load ``step_dir`` into a model of ``cfg`` in this rank's layout and score ``batches``
    global batches of ``dataset``; -> metrics/targets.py's summary (on every rank)."""
    from ..checkpoint.resume import load_checkpoint
    from ..training.trainer import build_model, loader, make_engine, make_schedule
    model = build_model(cfg, env)
    engine = make_engine(cfg, env, model)
    load_checkpoint(engine, cfg, step_dir, log, weights_only=True)
    schedule = make_schedule(cfg, env, engine)
    engine.eval()
    dp = data_parallel_size(cfg, env.world_size)
    bins, L = chunk_bins(rows_cfg), rows_cfg.model.chunk.text_tokens
    stats = new_stats(bins, env.device)
    feed = loader(cfg, dataset, 0, batches, dp) if model.part.first else None
    schedule.evaluate(feed, batches, rows_cfg.data.seq_length, target_loss_fn(bins, L), stats)
    dist.all_reduce(stats, group=parallel_state.get_data_parallel_group())
    stats = schedule.share_from_last(stats)
    del schedule, engine, model
    return summarize(stats, bins)
