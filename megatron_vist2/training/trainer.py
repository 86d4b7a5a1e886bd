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
from functools import partial
from typing import List, Optional, Tuple

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from ..config import (Config, analytic_parameter_counts, data_parallel_size, frozen_by_objective,
                      gradient_accumulation_steps, name_under, reads_back)
from ..data.dataset import GlobalBatchSampler, build_dataset
from ..data.packing import readback_shortens_segments
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
from ..checkpoint.manager import CheckpointManager
from .curriculum import Curriculum
from .deepspeed_config import deepspeed_config, resolve_dtype
from ..metrics.loss import (MODE_STATS, PROBE_STATS, TargetWeights, mode_means, ocr_head_loss,
                            readback_probe_loss, training_loss)
from .logger import MetricsLogger, StepMeter, memory_in_use_gb, wandb_settings
from .optim import build_optimizer, build_scheduler
from .health import RunHealth
from .signals import StopOnSignal
from .watchdog import collective
from ..metrics.during_training import ReadbackCer, eval_by_target
from .cursor_attention import (cursor_attention_first_loss, cursor_attention_mean, cursor_attention_terms,
                               first_stage_loss, terms_per_position)
from .ocr_stage import (FrontEval, collate_for, front_eval_line, ocr_cells, ocr_first_loss, ocr_loss_mean,
                        ocr_train_set)


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
    front: Optional[dict] = None              # last held-out front evaluation (train.ocr_head_eval_chunks)
    # greedy read-back of train.ocr_cer_chunks held-out chunks at the end: character accuracy, and
    # the same chunks read from each other's images (blind: what the language prior alone reaches)
    ocr_char_accuracy: Optional[float] = None
    ocr_blind_accuracy: Optional[float] = None
    skipped_steps: int = 0                    # steps whose update was not applied (run health)


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone().float()
    dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return value


def build_model(cfg: Config, env: DistEnv) -> Vist2Model:
    """This rank's pipeline stage of the model (the whole model without pipeline parallelism)."""
    model = Vist2Model(cfg, part=stage_part(cfg))
    freeze(model, cfg.train.freeze + frozen_by_objective(cfg))
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
               num_micro: int, dp: int, seq_length: int, by_mode: Optional[torch.Tensor] = None,
               loss_fn=training_loss, ocr_weight: float = 1.0, ocr_stats: Optional[torch.Tensor] = None,
               weights: TargetWeights = TargetWeights(), cursor_attention: Tuple[float, int] = (0.0, 0)) -> float:
    """One optimizer step over ``num_micro`` micro-batches of rows of ``seq_length`` tokens;
    ``micro_batches`` on the first pipeline stage only (every rank without pipeline parallelism);
    the losses by chunk mode are added into ``by_mode`` (metrics/loss.py). ``loss_fn`` weighs its
    targets by ``weights`` (their sum is the step's target count). Batches with OCR targets add
    ``ocr_weight`` x the OCR head's mean loss (training/ocr_stage.py; its [summed loss, cells]
    added into ``ocr_stats`` [:2]), and ``cursor_attention`` = (weight, terms per position) x guided
    attention's mean (training/cursor_attention.py; its [summed terms, terms] into ``ocr_stats``
    [2:]). Returns the step's LM loss (the weighted mean)."""
    count = ocr_count = guide_terms = None
    if micro_batches is not None:
        with collective("target-count all_reduce (data-parallel group)", timed=True):
            count = _all_reduce_sum(sum(weights.of(b).sum() for b in micro_batches))
            ocr_count = ocr_cells(micro_batches)
            guide_terms = cursor_attention_terms(cursor_attention[1], micro_batches)
    first_loss = first_stage_loss(ocr_first_loss(ocr_weight, ocr_count) if ocr_count is not None else None,
                                   cursor_attention_first_loss(cursor_attention[0], guide_terms)
                                   if guide_terms is not None else None)
    with collective("pipeline step (stage p2p, DeepSpeed gradient reduction and norm)"):
        return schedule.train_step(micro_batches, num_micro, count, dp, seq_length, loss_fn, by_mode,
                                   first_loss, ocr_stats)


def train_step_front(schedule: PipelineSchedule, micro_batches, num_micro: int, dp: int,
                     loss_fn=ocr_head_loss, ocr_stats: Optional[torch.Tensor] = None) -> float:
    """Stage 0's front-only optimizer step (``train.objective=ocr``) over ``num_micro`` micro-batches
    of rendered chunks (training/ocr_stage.py). Returns the mean loss per cell."""
    with collective("cell-count all_reduce (data-parallel group)", timed=True):
        count = ocr_cells(micro_batches)
    with collective("front step (DeepSpeed gradient reduction and norm)"):
        return schedule.train_step_unstaged(micro_batches, num_micro, count, dp, loss_fn, ocr_stats)


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
class TrainingSetup:
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
    readback_cer: Optional[ReadbackCer]       # train.ocr_cer_chunks: greedy read-back CER
    front_eval: Optional[FrontEval]           # train.ocr_head_eval_chunks: the OCR head's accuracy (first stage)
    ckpt: CheckpointManager                   # save, resume, rollback, asynchronous writes
    step: int                                 # where training starts (0, or the resumed step)
    consumed: int
    memory_before_model: float
    ocr_read: Optional[dict] = None           # the final greedy read-back (train.ocr_cer_chunks)
    front: Optional[dict] = None              # the last front evaluation (first stage)


def loader(cfg: Config, dataset, consumed_samples: int, global_batches: int, dp: int) -> DataLoader:
    """This data-parallel rank's micro-batches of ``global_batches`` global batches, from sample
    ``consumed_samples`` on (tensor-parallel peers read the same data)."""
    sampler = GlobalBatchSampler(consumed_samples, cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size,
                                 parallel_state.get_data_parallel_rank(), dp, global_batches)
    # a generator of its own: starting an iterator would otherwise draw from the global
    # generator and shift the dropout masks (a resumed run restores that generator)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_for(cfg),
                      num_workers=cfg.data.num_workers, persistent_workers=False,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


def setup(cfg: Config, env: DistEnv) -> TrainingSetup:
    """Model, engine and schedule of this rank's stage, the validation and OCR-probe data, and
    the starting point (a resumed run, or a new stage initialised from a previous one)."""
    dp = data_parallel_size(cfg, env.world_size)
    gas = gradient_accumulation_steps(cfg, env.world_size)
    log = MetricsLogger(cfg.logging.dir, env.is_main, cfg.logging.tensorboard, wandb_settings(cfg))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    G = cfg.parallel.global_batch_size
    rows = cfg.train.objective == "lm"        # stage 0's front-only objective has no rows to evaluate
    valid_set = build_dataset(cfg.data.valid_prefix, tokenizer, cfg, cfg.train.seed + 1000,
                              cfg.train.eval_batches * G) if rows else None
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
    if rows and reads_back(cfg):
        note = readback_shortens_segments(cfg.data.seq_length, cfg.model.chunk.text_tokens,
                                          cfg.model.visual_tokens_per_chunk)
        if note:
            log.print(note)
    engine = make_engine(cfg, env, model)
    schedule = make_schedule(cfg, env, engine)
    reads_data = model.part.first

    ckpt = CheckpointManager(cfg, engine, tokenizer, log, env.device)
    step, consumed = ckpt.start()              # a resume, a new stage's weights, or step 0

    valid_loader = probe_loader = None
    if reads_data and rows:                    # the same validation samples for every layout
        valid_loader = loader(cfg, valid_set, 0, cfg.train.eval_batches, dp)
    if cfg.train.ocr_probe_batches:            # the validation text, every chunk read back
        probe_cfg = replace(cfg, data=replace(cfg.data, readback_fraction=1.0))
        probe_set = build_dataset(cfg.data.valid_prefix, tokenizer, probe_cfg, cfg.train.seed + 2000,
                                  cfg.train.ocr_probe_batches * G)
        if reads_data:
            probe_loader = loader(cfg, probe_set, 0, cfg.train.ocr_probe_batches, dp)
    why_not = ReadbackCer.wanted(cfg)
    if why_not not in (None, "off"):
        log.print(why_not)
    readback_cer = ReadbackCer(cfg, tokenizer) if why_not is None and rows else None
    front_eval = FrontEval(cfg, tokenizer) if FrontEval.wanted(cfg) and reads_data else None
    return TrainingSetup(cfg, log, tokenizer, engine, schedule, dp, gas, reads_data, valid_loader,
                         probe_loader, readback_cer, front_eval, ckpt, step, consumed, memory_before_model)


def run_eval(run: TrainingSetup, at_step: int, final: bool = False) -> Tuple[float, Optional[float]]:
    """Validation loss, by target: chunk-first and within-chunk (and, with
    train.ocr_probe_batches, the OCR read-back accuracy; with train.ocr_cer_chunks, the greedy
    read-back CER, at the ``final`` evaluation with its blind score, kept in ``run.ocr_read``; with train.ocr_head_eval_chunks, the front's held-out accuracy), logged;
    validation rows are full length whatever the curriculum's phase. Stage 0's front-only
    objective has no rows: its evaluation loss is the OCR head's held-out loss per cell."""
    cfg = run.cfg
    loss, values, text = 0.0, {}, f"step {at_step}:"
    if cfg.train.objective == "lm":
        by_target = eval_by_target(run.schedule, run.valid_loader, cfg.train.eval_batches * run.gas, cfg)
        loss = by_target["loss"] if by_target["loss"] is not None else 0.0
        values, text = {"eval/loss": loss}, f"step {at_step}: eval loss {loss:.4f}"
        for key in ("chunk_first", "within_chunk"):
            if by_target[key]["loss"] is not None:
                values[f"eval/loss_{key}"] = by_target[key]["loss"]
                text += f" ({key.replace('_', '-')} {by_target[key]['loss']:.4f})"
    if run.front_eval is not None:
        run.front = front = run.front_eval(run.engine, run.schedule.device)
        values.update({"eval/front_char_accuracy": front["char_accuracy"], "eval/front_loss": front["loss"],
                       "eval/front_blind_char_accuracy": front.get("blind", {}).get("char_accuracy", float("nan")),
                       "eval/front_exact_match": front["exact_match"]})
        text += front_eval_line(front)
        if cfg.train.objective == "ocr":      # the run's held-out loss: the head's, per cell
            loss = values["eval/loss"] = front["loss"]
    if run.readback_cer is not None:
        read = run.readback_cer.read(run.engine, run.schedule.device, blind=final)
        values["eval/ocr_cer"] = cer = read["cer"]
        text += f" | OCR read-back CER {cer:.3f} ({len(run.readback_cer.chunks)} chunks)"
        if "blind" in read:
            values["eval/ocr_cer_blind"] = read["blind"]["cer"]
            text += f", blind {read['blind']['cer']:.3f}"
            run.ocr_read = read
    ocr_accuracy = None
    if cfg.train.ocr_probe_batches:
        _, ocr_accuracy = evaluate(run.schedule, run.probe_loader, cfg.train.ocr_probe_batches * run.gas,
                                   cfg.data.seq_length)
        values["eval/ocr_readback_accuracy"] = ocr_accuracy
        text += f" | OCR read-back accuracy {ocr_accuracy:.1%} (chance {1 / cfg.model.llm.vocab_size:.2%})"
    run.log.print(text)
    run.log.log(at_step, values)
    return loss, ocr_accuracy


def start_phase(run: TrainingSetup, curriculum: Curriculum, phase, step: int, consumed: int):
    """A new curriculum phase: the same corpus packed with its share and row length, read on
    from ``consumed`` -> its micro-batches (None on later pipeline stages)."""
    batches = None
    if run.reads_data:
        train_set = ocr_train_set(run.cfg, run.tokenizer) if run.cfg.train.objective == "ocr" else \
            curriculum.dataset(phase, run.tokenizer)
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
    by_mode = torch.zeros(MODE_STATS, device=env.device)     # loss by chunk mode since the last log
    # the OCR head's [loss sum, cells] and guided attention's [summed terms, terms] since then
    ocr_stats = torch.zeros(4, device=env.device)
    guide = (cfg.train.cursor_attention_weight, terms_per_position(cfg))
    meter = StepMeter(cfg, run.dp, env.world_size, step)
    stop = StopOnSignal(cfg.train.max_wall_minutes, env.device)
    losses, stopped, phase, batches = [], False, None, None
    health = RunHealth(run, env)               # skipped non-finite steps, spikes, stragglers, hangs
    weights = TargetWeights.from_config(cfg)          # the LM objective's target weights
    while step < cfg.train.steps:
        warming = phase is None or curriculum.index_at(step) != phase.index   # a new row length
        if warming:
            phase = curriculum.phase(step)
            batches = start_phase(run, curriculum, phase, step, consumed)
        loss_fn = health.start_step(step + 1, ocr_head_loss if cfg.train.objective == "ocr"
                                    else partial(training_loss, weights=weights), warming)
        micro = [next(batches) for _ in range(run.gas)] if run.reads_data else None
        if micro:
            meter.count(micro)                 # on the host copies: no device sync
            micro = [b.to(env.device) for b in micro]
        if cfg.train.objective == "ocr":
            loss = train_step_front(run.schedule, micro, run.gas, run.dp, loss_fn, ocr_stats[:2])
        else:
            loss = train_step(run.schedule, micro, run.gas, run.dp, phase.seq_length, by_mode, loss_fn,
                              cfg.train.ocr_weight, ocr_stats, weights, guide)
        step += 1
        consumed += cfg.parallel.global_batch_size
        losses.append(loss)
        # saves when due and the step was applied; stops a diverged run; rolls back on a spike
        rollback = run.ckpt.after_step(step, consumed, health.end_step(step, loss, consumed))
        if rollback is not None:               # the newest checkpoint is loaded: read on past the spike
            step, consumed = rollback
            phase, meter.last_logged = None, step
            continue
        if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
            meter.log(run.log, step, loss, run.engine, mode_means(by_mode, run.schedule), consumed,
                      phase.seq_length, ocr_loss_mean(ocr_stats[:2]), cursor_attention_mean(ocr_stats[2:]))
            health.report_step_times(step)
        if warming and meter.last_logged != step:
            meter.restart_clock(step)          # the log line times the steps after the compile
        if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < cfg.train.steps:
            last_eval, ocr_accuracy = run_eval(run, step)
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
        eval_after, ocr_accuracy = run_eval(run, step, final=True)
    path = run.ckpt.finish(step, consumed)     # the final save; every save complete before exit
    run.log.close()
    read = run.ocr_read or {}
    return TrainResult(step, consumed, losses, eval_before, eval_after,
                       meter.all_tokens / max(elapsed, 1e-9), path, ocr_accuracy, run.front,
                       ocr_char_accuracy=read.get("char_accuracy"),
                       ocr_blind_accuracy=read.get("blind", {}).get("char_accuracy"),
                       skipped_steps=health.total_skips)
