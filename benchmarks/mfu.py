#!/usr/bin/env python3
"""Model FLOPs utilisation of one device training a preset (default: 0.6b, bf16 on a GPU).

    python benchmarks/mfu.py [--preset 0.6b] [--micro-batch 1] [--steps 10] [--peak-tflops X]

Single process: the trainer's own engine (DeepSpeed, ZeRO-1 as the paper presets train: with bf16
that is DeepSpeed's BF16_Optimizer, fp32 gradient accumulation), schedule and non-finite guard
(training/health.py), the attention backend the config resolves to (flex on a GPU), rows packed
from the bundled corpus (data/sotu_train with data/tokenizer/sotu.model, built by
examples/tiny_cpu/run.sh; token ids of the small tokenizer are valid ids of any larger vocabulary).
The warm-up steps compile flex_attention before the clock starts.
MFU = cost/flops.py training_flops (3 x forward: LLM matmuls per non-padding token, attention
over the pairs the VIST2 mask allows, ViT + aligner per image; recomputation not counted) per
second / peak. Peak: bf16 dense of the GPU model (training/logger.py: H100/H200 SXM 989 TFLOP/s,
PCIe 756, NVL 835, A100 312) or --peak-tflops; on a CPU without --peak-tflops only TFLOP/s is
printed. Also printed: peak memory against the planner's estimate for the same config.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

from common import machine

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="0.6b")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.activation_checkpointing=full")
    args = ap.parse_args()
    os.chdir(REPO)
    tok, data = "data/tokenizer/sotu.model", "data/sotu_train"
    if not Path(tok).is_file() or not Path(data + ".idx").is_file():
        sys.exit(f"{tok} / {data}.idx missing: run `bash examples/tiny_cpu/run.sh train.steps=1` first")
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.dataset import PackedVist2Dataset, collate
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.cost.flops import training_flops
    from megatron_vist2.cost.planner import memory, stage_sizes
    from megatron_vist2.models.attention import resolve_backend
    from megatron_vist2.parallel.distributed import gpu_environment, init_distributed
    from megatron_vist2.training.health import NonFiniteGuard
    from megatron_vist2.training.logger import device_peak_tflops, peak_memory_gb
    from megatron_vist2.training.trainer import build_model, make_engine, make_schedule, train_step

    mb = args.micro_batch
    cfg = load_config(args.preset, [f"data.tokenizer={tok}", f"data.train_prefix={data}",
                                    f"data.valid_prefix={data}", f"parallel.micro_batch_size={mb}",
                                    f"parallel.global_batch_size={mb}", "parallel.zero_stage=1",
                                    f"train.steps={args.steps + args.warmup}", *args.overrides])
    for name, value in gpu_environment(cfg.parallel.tensor_parallel).items():
        os.environ.setdefault(name, value)
    env = init_distributed(1, 1)
    cfg = validate(cfg, 1)
    tokenizer = load_tokenizer(tok)
    dataset = PackedVist2Dataset(open_indexed(data, tokenizer), tokenizer, cfg, cfg.train.seed)
    engine = make_engine(cfg, env, build_model(cfg, env))
    schedule = make_schedule(cfg, env, engine)
    schedule.update_guard = NonFiniteGuard(engine, env.device, 0, 1)     # as the trainer runs
    batches = [collate([dataset[i * mb + j] for j in range(mb)])
               for i in range(args.steps + args.warmup)]
    flops = [training_flops(cfg, b.layout, b.images.shape[0]) for b in batches]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for batch in batches:
        sync()
        start = time.perf_counter()
        train_step(schedule, [batch.to(env.device)], 1, 1, cfg.data.seq_length)
        sync()
        times.append(time.perf_counter() - start)
    t, f = sum(times[args.warmup:]), sum(flops[args.warmup:])
    tokens = sum(int((b.layout.kind >= 0).sum()) for b in batches[args.warmup:])
    peak = device_peak_tflops(args.peak_tflops or 0.0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    backend = resolve_backend(cfg.model.attention_backend, env.device, cfg.model.llm.attention_dropout)
    print(f"machine: {machine()} | device: {device} | torch {torch.__version__} | dtype "
          f"{engine.module.parameters().__next__().dtype} | attention {backend} | ZeRO-{cfg.parallel.zero_stage} "
          f"({type(engine.optimizer).__name__})")
    print(f"preset {args.preset}: {cfg.data.seq_length} tokens/row x {mb} rows, {args.steps} timed steps "
          f"after {args.warmup} warm-up (first step {times[0]:.1f} s); activation checkpointing "
          f"{cfg.train.activation_checkpointing}")
    print(f"step {t / args.steps:.3f} s | {tokens / t:,.0f} tokens/s (text + visual) | "
          f"{f / t / 1e12:.2f} TFLOP/s model FLOPs"
          + (f" | MFU {f / t / 1e12 / peak:.1%} of {peak:g} TFLOP/s" if peak else " | MFU: no peak given"))
    estimate = sum(memory(cfg, 1, stage_sizes(cfg)[0]).values()) / 2 ** 30
    print(f"peak memory {peak_memory_gb():.1f} GiB ({'allocated' if torch.cuda.is_available() else 'resident'}); "
          f"planner's estimate {estimate:.1f} GiB")


if __name__ == "__main__":
    main()
