"""The training loop: DeepSpeed engine over the VIST2 model, readable in one sitting.

Each rank holds one pipeline stage (the whole model without pipeline parallelism) in its own
DeepSpeed engine; parallel/pipeline.py runs the micro-batches through the stages (one forward and
one backward per micro-batch when there is a single stage). Only the first stage reads data.

Loss normalisation: each optimizer step's loss is the mean over *all* text targets of the global
batch (all micro-batches, all data-parallel ranks). The global target count is all-reduced first;
each micro-batch then back-propagates sum * (dp * gas) / count, which DeepSpeed's averaging over
ranks and accumulation steps turns into exactly d(sum / count). The result does not depend on
how the global batch is split across ranks and micro-batches.

Reading order: ``train`` (the loop), ``setup`` (model, engine, schedule, validation data,
resume), ``train_step`` and ``evaluate`` (one call of the pipeline schedule each, with the VIST2
loss of metrics/loss.py); the curriculum is training/curriculum.py, the log line logger.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from ..config import (Config, analytic_parameter_counts, data_parallel_size, gradient_accumulation_steps,
                     name_under)
from ..data.dataset import GlobalBatchSampler, build_dataset, collate
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..models.attention import resolve_backend
from ..models.vist2 import Vist2Batch, Vist2Model
from ..parallel.deepspeed_mpu import MegatronMPU
from ..parallel.distributed import DistEnv
from ..parallel import compat
from ..parallel.activation_checkpoint import apply_activation_checkpointing
from ..parallel.grad_sync import sum_partial_grads_over_tensor_parallel
from ..parallel.pipeline import PipelineSchedule, stage_part
from ..parallel.random import seed_runtime_rng
from ..checkpoint.format import resolve_tag_dir
from ..checkpoint.async_write import AsyncWriter
from ..checkpoint.resume import load_checkpoint, resume_dir
from ..checkpoint.save import save_checkpoint
from .curriculum import Curriculum
from .deepspeed_config import deepspeed_config, resolve_dtype
from ..metrics.loss import PROBE_STATS, SPLIT_STATS, readback_probe_loss, split_means, training_loss
from .logger import MetricsLogger, StepMeter, memory_in_use_gb, wandb_settings
from .optim import build_optimizer, build_scheduler
from ..checkpoint import faults
from .health import RunHealth
from .signals import StopOnSignal
from .watchdog import collective
from ..metrics.during_training import ReadbackProbe, split_eval


@dataclass
class TrainResult:
    steps: int
    consumed_samples: int
    train_losses: List[float]
    eval_before: float
    eval_after: float
    tokens_per_second: float
    checkpoint: Optional[str]
    ocr_accuracy: Optional[float] = None      # last OCR read-back probe (train.ocr_probe_batches)


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone().float()
    dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return value


def build_model(cfg: Config, env: DistEnv) -> Vist2Model:
    """This rank's pipeline stage of the model (the whole model without pipeline parallelism)."""
    model = Vist2Model(cfg, part=stage_part(cfg))
    freeze(model, cfg.train.freeze)
    seed_runtime_rng(cfg.train.seed)           # dropout streams (parallel/random.py)
    sum_partial_grads_over_tensor_parallel(model)
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    return model


def freeze(model: Vist2Model, prefixes) -> int:
    """Parameters named ``prefix`` or ``prefix.*`` get requires_grad=False (no gradient, no
    optimizer state, never changed). Returns how many were frozen on this rank."""
    frozen = 0
    for name, p in model.named_parameters():
        if any(name_under(name, x) for x in prefixes):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def make_engine(cfg: Config, env: DistEnv, model: Vist2Model):
    """Wrap this stage in a DeepSpeed engine over its data-parallel group (ZeRO stage, clipping,
    dtype from the config)."""
    if cfg.parallel.zero_stage == 3 and model.tied and model.part.first:
        # The tied embedding weight is read outside the embedding's forward (by the output layer,
        # or by the tied-gradient term on a first pipeline stage): ZeRO-3 must gather it there too.
        user = model.head if model.part.last else model.tied_gradient
        deepspeed.zero.register_external_parameter(user, model.front.embedding.weight)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, cfg.optim),
        lr_scheduler=build_scheduler(cfg.optim, cfg.train.steps),
        config=deepspeed_config(cfg, env.world_size), dist_init_required=False, mpu=MegatronMPU())
    if cfg.parallel.zero_stage == 0 and resolve_dtype(cfg) == torch.float32:
        compat.keep_fp32_grad_norm(engine)
    return engine


def make_schedule(cfg: Config, env: DistEnv, engine) -> PipelineSchedule:
    return PipelineSchedule(cfg, engine, resolve_dtype(cfg), env.device)


def train_step(schedule: PipelineSchedule, micro_batches: Optional[List[Vist2Batch]],
               num_micro: int, dp: int, seq_length: int, split: Optional[torch.Tensor] = None,
               loss_fn=training_loss) -> float:
    """One optimizer step over ``num_micro`` micro-batches of rows of ``seq_length`` tokens;
    ``micro_batches`` on the first pipeline stage only (every rank without pipeline parallelism);
    the loss split by chunk mode is added into ``split`` (metrics/loss.py). Returns the step's
    loss."""
    count = None
    if micro_batches is not None:
        with collective("target-count all_reduce (data-parallel group)", timed=True):
            count = _all_reduce_sum(sum(b.loss_mask.sum() for b in micro_batches))
    with collective("pipeline step (stage p2p, DeepSpeed gradient reduction and norm)"):
        return schedule.train_step(micro_batches, num_micro, count, dp, seq_length, loss_fn, split)


def evaluate(schedule: PipelineSchedule, loader, num_micro: int, seq_length: int) -> Tuple[float, float]:
    """-> (mean loss, read-back accuracy) over the validation batches (``loader`` on the first
    stage only, else None). Read-back accuracy: the share of text targets in read-back chunks
    that the greedy prediction gets right, i.e. does the model read chunk i's text off V_i
    (nan without read-back chunks)."""
    schedule.engine.eval()
    hits = torch.zeros(PROBE_STATS, device=schedule.device)
    sums = schedule.evaluate(loader, num_micro, seq_length, readback_probe_loss, hits)
    totals = schedule.share_from_last(_all_reduce_sum(torch.cat([sums, hits])))
    schedule.engine.train()
    accuracy = (totals[2] / totals[3]).item() if totals[3] > 0 else float("nan")
    return (totals[0] / totals[1].clamp(min=1.0)).item(), accuracy


@dataclass
class Run:
    """What ``setup`` builds for the loop."""
    cfg: Config
    log: MetricsLogger
    tokenizer: Tokenizer
    engine: object
    schedule: PipelineSchedule
    dp: int
    gas: int
    reads_data: bool                          # first pipeline stage: later ones get metadata
    valid_loader: Optional[DataLoader]
    probe_loader: Optional[DataLoader]
    readback_probe: Optional[ReadbackProbe]   # train.ocr_cer_chunks: greedy read-back CER
    step: int                                 # where training starts (0, or the resumed step)
    consumed: int
    memory_before_model: float
    checkpoint: Optional[str] = None          # the resumed checkpoint (never saved again)


def loader(cfg: Config, dataset, consumed_samples: int, global_batches: int, dp: int) -> DataLoader:
    """This data-parallel rank's micro-batches of ``global_batches`` global batches, from sample
    ``consumed_samples`` on (tensor-parallel peers read the same data)."""
    sampler = GlobalBatchSampler(consumed_samples, cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size,
                                 parallel_state.get_data_parallel_rank(), dp, global_batches)
    # a generator of its own: starting an iterator would otherwise draw from the global
    # generator and shift the dropout masks (a resumed run restores that generator)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                      num_workers=cfg.data.num_workers, persistent_workers=False,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


def setup(cfg: Config, env: DistEnv) -> Run:
    """Model, engine and schedule of this rank's stage, the validation and OCR-probe data, and
    the starting point (a resumed run, or a new stage initialised from a previous one)."""
    dp = data_parallel_size(cfg, env.world_size)
    gas = gradient_accumulation_steps(cfg, env.world_size)
    log = MetricsLogger(cfg.logging.dir, env.is_main, cfg.logging.tensorboard, wandb_settings(cfg))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    G = cfg.parallel.global_batch_size
    valid_set = build_dataset(cfg.data.valid_prefix, tokenizer, cfg, cfg.train.seed + 1000,
                              cfg.train.eval_batches * G)
    memory_before_model = memory_in_use_gb()     # the model's share of peak memory = peak - this
    model = build_model(cfg, env)
    if resolve_backend(cfg.model.attention_backend, env.device, cfg.model.llm.attention_dropout) == "flex":
        # flex_attention compiles once per row length and grad mode; a recompile every step
        # would be a bug, and past dynamo's recompile limit flex runs eager (S x S scores)
        torch._logging.set_logs(recompiles=True)
    counts = analytic_parameter_counts(cfg)
    log.print(f"model: {counts['total']:,} parameters (vision {counts['vision']:,}, aligner "
              f"{counts['aligner']:,}, llm {counts['llm']:,}; {model.parameter_counts()['total']:,} "
              f"on this rank); rho = {cfg.model.compression_ratio:g}; tp={cfg.parallel.tensor_parallel} "
              f"pp={cfg.parallel.pipeline_parallel} dp={dp} micro={cfg.parallel.micro_batch_size} "
              f"accumulation={gas} zero={cfg.parallel.zero_stage}")
    engine = make_engine(cfg, env, model)
    schedule = make_schedule(cfg, env, engine)
    reads_data = model.part.first

    step, consumed = 0, 0
    start_from = resume_dir(cfg)
    path = None                                # the newest checkpoint of this run
    if start_from:
        step, consumed = load_checkpoint(engine, cfg, start_from, log.print)
        path = str(resolve_tag_dir(start_from))          # a complete checkpoint is never re-saved
        log.print(f"resumed from {start_from} at step {step} ({consumed} samples)"
                  + ("; train.steps is reached: nothing left to train" if step >= cfg.train.steps else ""))
    elif cfg.checkpoint.init_from:             # a new stage: the previous stage's weights only
        prev_step, _ = load_checkpoint(engine, cfg, cfg.checkpoint.init_from, log.print, weights_only=True)
        log.print(f"initialised from the weights of {cfg.checkpoint.init_from} (its step {prev_step}); "
                  f"new optimizer and schedule")

    valid_loader = probe_loader = None
    if reads_data:                             # the same validation samples for every layout
        valid_loader = loader(cfg, valid_set, 0, cfg.train.eval_batches, dp)
    if cfg.train.ocr_probe_batches:            # the validation text, every chunk read back
        probe_cfg = replace(cfg, data=replace(cfg.data, readback_fraction=1.0))
        probe_set = build_dataset(cfg.data.valid_prefix, tokenizer, probe_cfg, cfg.train.seed + 2000,
                                  cfg.train.ocr_probe_batches * G)
        if reads_data:
            probe_loader = loader(cfg, probe_set, 0, cfg.train.ocr_probe_batches, dp)
    why_not = ReadbackProbe.wanted(cfg)
    if why_not not in (None, "off"):
        log.print(why_not)
    readback_probe = ReadbackProbe(cfg, tokenizer) if why_not is None else None
    return Run(cfg, log, tokenizer, engine, schedule, dp, gas, reads_data, valid_loader, probe_loader,
               readback_probe, step, consumed, memory_before_model, path)


def run_eval(run: Run, at_step: int) -> Tuple[float, Optional[float]]:
    """Validation loss, split into chunk-first and within-chunk targets (and, with
    train.ocr_probe_batches, the OCR read-back accuracy; with train.ocr_cer_chunks, the greedy
    read-back CER), logged; validation rows are full length whatever the curriculum's phase."""
    cfg = run.cfg
    split = split_eval(run.schedule, run.valid_loader, cfg.train.eval_batches * run.gas, cfg)
    loss = split["loss"] if split["loss"] is not None else 0.0
    values, text = {"eval/loss": loss}, f"step {at_step}: eval loss {loss:.4f}"
    for key in ("chunk_first", "within_chunk"):
        if split[key]["loss"] is not None:
            values[f"eval/loss_{key}"] = split[key]["loss"]
            text += f" ({key.replace('_', '-')} {split[key]['loss']:.4f})"
    if run.readback_probe is not None:
        values["eval/ocr_cer"] = cer = run.readback_probe.cer(run.engine, run.schedule.device)
        text += f" | OCR read-back CER {cer:.3f} ({len(run.readback_probe.chunks)} chunks)"
    ocr_accuracy = None
    if cfg.train.ocr_probe_batches:
        _, ocr_accuracy = evaluate(run.schedule, run.probe_loader, cfg.train.ocr_probe_batches * run.gas,
                                   cfg.data.seq_length)
        values["eval/ocr_readback_accuracy"] = ocr_accuracy
        text += f" | OCR read-back accuracy {ocr_accuracy:.1%} (chance {1 / cfg.model.llm.vocab_size:.2%})"
    run.log.print(text)
    run.log.log(at_step, values)
    return loss, ocr_accuracy


def start_phase(run: Run, curriculum: Curriculum, phase, step: int, consumed: int):
    """A new curriculum phase: the same corpus packed with its share and row length, read on
    from ``consumed`` -> its micro-batches (None on later pipeline stages)."""
    batches = None
    if run.reads_data:
        train_set = curriculum.dataset(phase, run.tokenizer)
        batches = iter(loader(run.cfg, train_set, consumed, min(phase.end, run.cfg.train.steps) - step, run.dp))
    if len(curriculum) > 1:
        run.log.print(f"step {step}: read-back share {phase.readback_share:g}, rows of {phase.seq_length} "
                      f"tokens (until step {phase.end})")
    return batches


def train(cfg: Config, env: DistEnv) -> TrainResult:
    run = setup(cfg, env)
    step, consumed = run.step, run.consumed
    curriculum = Curriculum(cfg)               # read-back share and row length by step
    eval_before, ocr_accuracy = run_eval(run, step)
    last_eval = eval_before
    run.log.log(step, {"train/memory_before_model_gb": run.memory_before_model})
    split = torch.zeros(SPLIT_STATS, device=env.device)     # loss by chunk mode since the last log
    meter = StepMeter(cfg, run.dp, env.world_size, step)
    stop = StopOnSignal(cfg.train.max_wall_minutes, env.device)
    losses, stopped, phase, batches = [], False, None, None
    path = run.checkpoint                      # the newest checkpoint of this run
    writer = AsyncWriter(run.log.print) if cfg.checkpoint.async_save else None
    health = RunHealth(run, env, writer)       # skipped non-finite steps, spikes, stragglers, hangs
    while step < cfg.train.steps:
        if writer is not None:
            writer.poll()                      # rank 0 completes a background save once written
        warming = phase is None or curriculum.index_at(step) != phase.index   # a new row length
        if warming:
            phase = curriculum.phase(step)
            batches = start_phase(run, curriculum, phase, step, consumed)
        loss_fn = health.start_step(step + 1, training_loss, warming)
        micro = [next(batches) for _ in range(run.gas)] if run.reads_data else None
        if micro:
            meter.count(micro)                 # on the host copies: no device sync
            micro = [b.to(env.device) for b in micro]
        loss = train_step(run.schedule, micro, run.gas, run.dp, phase.seq_length, split, loss_fn)
        faults.nan_weights(run.engine.module, step + 1, env.rank)      # tests only (MEGATRON_VIST2_FAULT)
        step += 1
        consumed += cfg.parallel.global_batch_size
        losses.append(loss)
        rollback = health.end_step(step, loss, consumed, path)   # a skipped step raises after too many
        if rollback is not None:               # the newest checkpoint is loaded: read on past the spike
            step, consumed = rollback
            phase, meter.last_logged = None, step
            continue
        if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
            meter.log(run.log, step, loss, run.engine, split_means(split, run.schedule), consumed,
                      phase.seq_length)
            health.report_step_times(step)
        if warming and meter.last_logged != step:
            meter.restart_clock(step)          # the log line times the steps after the compile
        if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < cfg.train.steps:
            last_eval, ocr_accuracy = run_eval(run, step)
        if cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0 and step < cfg.train.steps:
            path = save_checkpoint(run.engine, cfg, step, consumed, run.tokenizer.sha256, run.log.print,
                                   writer)
        with collective("stop-flag all_reduce (world)", timed=True):
            should_stop = stop.should_stop()
        if should_stop:
            run.log.print(f"{stop.received or 'stop requested on another rank'}: saving at step {step} and exiting")
            stopped = True
            break
    stop.restore()
    health.close()
    elapsed = time.time() - meter.t_start
    if stopped:                                # no final evaluation: the grace period is short
        eval_after = last_eval
    else:
        eval_after, ocr_accuracy = run_eval(run, step)
    if path is None or not path.endswith(f"step_{step:07d}"):      # a resumed run at its end
        path = save_checkpoint(run.engine, cfg, step, consumed, run.tokenizer.sha256, run.log.print,
                               writer)
    if writer is not None:
        writer.wait(env.device)                # exit only with every save complete
    run.log.close()
    return TrainResult(step, consumed, losses, eval_before, eval_after,
                       meter.all_tokens / max(elapsed, 1e-9), path, ocr_accuracy)
