"""The training loop: DeepSpeed engine over the VIST2 model, readable in one sitting.

Each rank holds one pipeline stage (the whole model without pipeline parallelism) in its own
DeepSpeed engine; parallel/pipeline.py runs the micro-batches through the stages (one forward and
one backward per micro-batch when there is a single stage). Only the first stage reads data.

Loss normalisation: each optimizer step's loss is the mean over *all* text targets of the global
batch (all micro-batches, all data-parallel ranks). The global target count is all-reduced first;
each micro-batch then back-propagates sum * (dp * gas) / count, which DeepSpeed's averaging over
ranks and accumulation steps turns into exactly d(sum / count). The result does not depend on
how the global batch is split across ranks and micro-batches.
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

from ..config import Config, data_parallel_size, gradient_accumulation_steps, name_under
from ..data.dataset import GlobalBatchSampler, build_dataset, collate
from ..data.tokenizer import load_tokenizer
from ..models.attention import PAD
from ..models.size import analytic_parameter_counts, training_flops
from ..models.vist2 import Vist2Batch, Vist2Model
from ..parallel.deepspeed_mpu import MegatronMPU
from ..parallel.distributed import DistEnv, data_parallel_group
from ..parallel.activation_checkpoint import apply_activation_checkpointing
from ..parallel.grad_sync import sum_partial_grads_over_tensor_parallel
from ..parallel.pipeline import PipelineSchedule, stage_part
from ..parallel.random import seed_runtime_rng
from .checkpoint import load_checkpoint, resolve_tag_dir, resume_dir, save_checkpoint
from .deepspeed_config import deepspeed_config, resolve_dtype
from .metrics import MetricsLogger, device_peak_tflops, memory_in_use_gb, peak_memory_gb
from .optim import build_optimizer, build_scheduler
from .safeguards import inject_nan_fault, raise_diverged
from .signals import StopOnSignal


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
    dist.all_reduce(value, group=data_parallel_group())
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
        _keep_fp32_grad_norm(engine)
    return engine


def _keep_fp32_grad_norm(engine) -> None:
    """Without ZeRO in fp32 DeepSpeed clips with clip_grad_norm_ but drops the norm it computed
    (get_global_grad_norm() stays None): the same call, its result kept for the logs."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip_and_keep():
        engine._global_grad_norm = float(clip_grad_norm_(parameters=engine.module.parameters(),
                                                         max_norm=engine.gradient_clipping(), mpu=engine.mpu))
    engine.clip_fp32_gradients = clip_and_keep


def make_schedule(cfg: Config, env: DistEnv, engine) -> PipelineSchedule:
    return PipelineSchedule(cfg, engine, resolve_dtype(cfg), env.device)


def train_step(schedule: PipelineSchedule, micro_batches: Optional[List[Vist2Batch]],
               num_micro: int, dp: int) -> float:
    """One optimizer step over ``num_micro`` micro-batches; ``micro_batches`` on the first
    pipeline stage only (every rank without pipeline parallelism). Returns the step's loss."""
    count = None
    if micro_batches is not None:
        count = _all_reduce_sum(sum(b.loss_mask.sum() for b in micro_batches))
    return schedule.train_step(micro_batches, num_micro, count, dp)


def evaluate(schedule: PipelineSchedule, loader, num_micro: int) -> Tuple[float, float]:
    """-> (mean loss, read-back accuracy) over the validation batches (``loader`` on the first
    stage only, else None). Read-back accuracy: the share of text targets in read-back chunks
    that the greedy prediction gets right, i.e. does the model read chunk i's text off V_i
    (nan without read-back chunks)."""
    schedule.engine.eval()
    totals = schedule.share_from_last(_all_reduce_sum(schedule.evaluate(loader, num_micro)))
    schedule.engine.train()
    accuracy = (totals[2] / totals[3]).item() if totals[3] > 0 else float("nan")
    return (totals[0] / totals[1].clamp(min=1.0)).item(), accuracy


def curriculum_phases(cfg: Config) -> List[Tuple[int, float, int]]:
    """(first step, read-back share, sequence length) of each curriculum phase: a new phase
    wherever data.readback_schedule or data.seq_length_schedule changes (one phase without)."""
    shares = [(int(s), float(f)) for s, f in cfg.data.readback_schedule] or [(0, cfg.data.readback_fraction)]
    lengths = [(int(s), int(n)) for s, n in cfg.data.seq_length_schedule] or [(0, cfg.data.seq_length)]
    at = lambda sched, step: [v for s, v in sched if s <= step][-1]      # noqa: E731
    starts = sorted({s for s, _ in shares} | {s for s, _ in lengths})
    return [(s, at(shares, s), at(lengths, s)) for s in starts]


def phase_at(phases: List[Tuple[int, float, int]], step: int) -> int:
    return max(i for i, (start, _, _) in enumerate(phases) if start <= step)


def train(cfg: Config, env: DistEnv) -> TrainResult:
    dp = data_parallel_size(cfg, env.world_size)
    dp_rank = parallel_state.get_data_parallel_rank()      # tensor-parallel peers read the same data
    gas = gradient_accumulation_steps(cfg, env.world_size)
    log = MetricsLogger(cfg.logging.dir, env.is_main, cfg.logging.tensorboard)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    G = cfg.parallel.global_batch_size
    valid_set = build_dataset(cfg.data.valid_prefix, tokenizer, cfg, cfg.train.seed + 1000,
                              cfg.train.eval_batches * G)
    memory_before_model = memory_in_use_gb()     # the model's share of peak memory = peak - this
    model = build_model(cfg, env)
    counts = analytic_parameter_counts(cfg)
    log.print(f"model: {counts['total']:,} parameters (vision {counts['vision']:,}, aligner "
              f"{counts['aligner']:,}, llm {counts['llm']:,}; {model.parameter_counts()['total']:,} "
              f"on this rank); rho = {cfg.model.compression_ratio:g}; tp={cfg.parallel.tensor_parallel} "
              f"pp={cfg.parallel.pipeline_parallel} dp={dp} micro={cfg.parallel.micro_batch_size} "
              f"accumulation={gas} zero={cfg.parallel.zero_stage}")
    engine = make_engine(cfg, env, model)
    schedule = make_schedule(cfg, env, engine)
    reads_data = model.part.first              # later pipeline stages get metadata with activations

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

    def loader(dataset, consumed_samples, global_batches):
        if not reads_data:
            return None
        sampler = GlobalBatchSampler(consumed_samples, cfg.parallel.micro_batch_size,
                                     cfg.parallel.global_batch_size, dp_rank, dp, global_batches)
        # a generator of its own: starting an iterator would otherwise draw from the global
        # generator and shift the dropout masks (a resumed run restores that generator)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                          num_workers=cfg.data.num_workers, persistent_workers=False,
                          generator=torch.Generator().manual_seed(cfg.train.seed))

    valid_loader = loader(valid_set, 0, cfg.train.eval_batches)   # same samples for every layout
    probe_loader = None
    if cfg.train.ocr_probe_batches:            # the validation text, every chunk read back
        probe_cfg = replace(cfg, data=replace(cfg.data, readback_fraction=1.0))
        probe_set = build_dataset(cfg.data.valid_prefix, tokenizer, probe_cfg, cfg.train.seed + 2000,
                                  cfg.train.ocr_probe_batches * G)
        probe_loader = loader(probe_set, 0, cfg.train.ocr_probe_batches)
    ocr_accuracy = None

    def run_eval(at_step: int) -> float:
        nonlocal ocr_accuracy
        schedule.use_sequence_length(cfg.data.seq_length)      # validation rows are full length
        loss, _ = evaluate(schedule, valid_loader, cfg.train.eval_batches * gas)
        values, text = {"eval/loss": loss}, f"step {at_step}: eval loss {loss:.4f}"
        if cfg.train.ocr_probe_batches:
            _, ocr_accuracy = evaluate(schedule, probe_loader, cfg.train.ocr_probe_batches * gas)
            values["eval/ocr_readback_accuracy"] = ocr_accuracy
            text += f" | OCR read-back accuracy {ocr_accuracy:.1%} (chance {1 / cfg.model.llm.vocab_size:.2%})"
        log.print(text)
        log.log(at_step, values)
        if phase is not None:
            schedule.use_sequence_length(phases[phase][2])
        return loss

    phases = curriculum_phases(cfg)          # read-back share and row length by step
    train_iter, phase = None, None
    eval_before = run_eval(step)
    log.log(step, {"train/memory_before_model_gb": memory_before_model})

    losses, tokens_seen, all_tokens, flops_seen = [], 0, 0, 0.0
    peak = device_peak_tflops(cfg.train.peak_tflops)
    t_start = t_last = time.time()
    last_logged = step
    last_eval = eval_before
    stop = StopOnSignal(cfg.train.max_wall_minutes, env.device)
    stopped = False
    while step < cfg.train.steps:
        if phase != phase_at(phases, step):
            # a new phase: the same corpus packed with its share and row length, read on from
            # `consumed`; every stage switches its transfer shapes
            phase = phase_at(phases, step)
            start, share, seq_length = phases[phase]
            end = phases[phase + 1][0] if phase + 1 < len(phases) else cfg.train.steps
            schedule.use_sequence_length(seq_length)
            if reads_data:
                phase_cfg = replace(cfg, data=replace(cfg.data, readback_fraction=share, seq_length=seq_length))
                train_set = build_dataset(cfg.data.train_prefix, tokenizer, phase_cfg, cfg.train.seed,
                                          cfg.train.steps * G)
                train_iter = iter(loader(train_set, consumed, min(end, cfg.train.steps) - step))
            if len(phases) > 1:
                log.print(f"step {step}: read-back share {share:g}, rows of {seq_length} tokens "
                          f"(until step {end})")
        micro = [next(train_iter) for _ in range(gas)] if reads_data else None
        if micro:                              # counted on the host copies: no device sync
            new_tokens = int(sum((b.layout.kind != PAD).sum() for b in micro)) * dp  # text + visual
            tokens_seen, all_tokens = tokens_seen + new_tokens, all_tokens + new_tokens
            # model FLOPs of the global batch (this rank's x dp)
            flops_seen += dp * sum(training_flops(cfg, b.layout, b.images.shape[0], cfg.train.freeze)
                                   for b in micro)
            micro = [b.to(env.device) for b in micro]
        loss = train_step(schedule, micro, gas, dp)
        inject_nan_fault(engine.module, step + 1)          # tests only (MEGATRON_VIST2_FAULT)
        if loss != loss or loss in (float("inf"), float("-inf")):
            raise_diverged(loss, step + 1, cfg.checkpoint.save_dir)
        step += 1
        consumed += cfg.parallel.global_batch_size
        losses.append(loss)
        if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
            now = time.time()
            tps = tokens_seen / (now - t_last)
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            lr = engine.get_lr()[0]
            interval = step - last_logged
            tflops = flops_seen / (now - t_last) / env.world_size / 1e12      # per device
            readback_loss, history_loss = schedule.loss_split()
            memory = peak_memory_gb()
            log.print(f"step {step}/{cfg.train.steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                      f"{grad_norm:.3f} | {tps:,.0f} tok/s | {(now - t_last) / interval:.2f} s/step | "
                      f"{tflops:.2f} TFLOP/s" + (f" ({tflops / peak:.1%} MFU)" if peak else "")
                      + f" | {memory:.1f} GB")
            log.log(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                           "train/tokens_per_s": tps, "train/samples_per_s":
                           interval * cfg.parallel.global_batch_size / (now - t_last),
                           "train/tflops_per_device": tflops, "train/loss_readback": readback_loss,
                           "train/loss_history": history_loss, "train/peak_memory_gb": memory,
                           "train/consumed_samples": consumed, "train/seq_length": phases[phase][2]}
                    | ({"train/mfu": tflops / peak} if peak else {}))
            tokens_seen, flops_seen, t_last, last_logged = 0, 0.0, now, step
        if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < cfg.train.steps:
            last_eval = run_eval(step)
        if cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0 \
                and step < cfg.train.steps:
            path = save_checkpoint(engine, cfg, step, consumed, tokenizer.sha256, log.print)
        if stop.should_stop():
            log.print(f"{stop.received or 'stop requested on another rank'}: saving at step {step} and exiting")
            stopped = True
            break
    stop.restore()
    elapsed = time.time() - t_start
    if stopped:                                # no final evaluation: the grace period is short
        eval_after = last_eval
    else:
        eval_after = run_eval(step)
    if path is None or not path.endswith(f"step_{step:07d}"):
        path = save_checkpoint(engine, cfg, step, consumed, tokenizer.sha256, log.print)
    log.close()
    return TrainResult(step, consumed, losses, eval_before, eval_after,
                       all_tokens / max(elapsed, 1e-9), path, ocr_accuracy)
