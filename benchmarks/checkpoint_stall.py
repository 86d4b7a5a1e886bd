#!/usr/bin/env python3
"""Training stall of an asynchronous checkpoint save against the synchronous save, same process,
same state (docs/checkpoints.md, "Asynchronous saves").

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 \
        python benchmarks/checkpoint_stall.py [--llm-layers 8] [--tokenizer data/tokenizer/sotu.model]

Run it with glibc returning freed blocks (``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``:
the zero gradients are freed before the saves). The 0.6b preset (fp32, one process, ZeRO-0, the bundled 2,048-token vocabulary) with Adam's
moments filled by one optimizer step on zero gradients (the state a real step leaves: weights and
two moments, 12 bytes per parameter), without data or activations. ``--llm-layers`` cuts the LLM
to fit the machine: the asynchronous save holds a second copy of the state in host memory, so
the peak is about twice the checkpoint (the full 28 layers need about 20 GiB; the script stops
before building anything when MemAvailable is short).

Measured, one save after another: sync = the whole ``save_checkpoint`` (every file written,
complete.json, rename, latest); async stall = what ``save_checkpoint`` blocks the training
thread for (the finiteness check, the copy into host memory, the small files), async total =
until the background writer is done and the checkpoint complete; two asynchronous saves: the
first allocates the host buffers, every later one reuses them (the steady state of a run). Printed: the
ratio stall / sync (the goal: <= 10 %).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable")) / 2 ** 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-layers", type=int, default=8)
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--dir", default=None, help="where the checkpoints go (default: the temporary "
                    "directory; removed at the end)")
    args = ap.parse_args()
    print(f"machine: {machine()} | load average {os.getloadavg()[0]:.1f}")

    import torch
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.config import analytic_parameter_counts
    from megatron_vist2.parallel.distributed import init_distributed
    from megatron_vist2.checkpoint.async_write import AsyncWriter
    from megatron_vist2.checkpoint.save import save_checkpoint
    from megatron_vist2.training.trainer import build_model, make_engine

    out = Path(tempfile.mkdtemp(prefix="ckpt_stall_", dir=args.dir))
    overrides = ["model.llm.vocab_size=2048", f"model.llm.num_layers={args.llm_layers}",
                 f"data.tokenizer={args.tokenizer}", "train.dtype=fp32", "parallel.zero_stage=0",
                 "parallel.micro_batch_size=1", "parallel.global_batch_size=1", "optim.grad_clip=0.0",
                 f"checkpoint.save_dir={out}/ckpt"]
    cfg = validate(load_config("0.6b", overrides), 1)
    params = analytic_parameter_counts(cfg)["total"]
    state_gib = params * 12 / 2 ** 30
    print(f"0.6b preset, {args.llm_layers} LLM layers: {params:,} parameters, state {state_gib:.1f} GiB; "
          f"MemAvailable {available_gib():.1f} GiB")
    if available_gib() < 2.3 * state_gib:
        sys.exit(f"not enough free memory for the state and its host copy (~{2.3 * state_gib:.1f} GiB): "
                 f"use fewer --llm-layers")
    env = init_distributed(1, 1)
    engine = make_engine(cfg, env, build_model(cfg, env))
    for p in engine.module.parameters():       # Adam's moments exist after one step
        p.grad = torch.zeros_like(p)
    engine.optimizer.step()
    for p in engine.module.parameters():
        p.grad = None
    quiet = lambda *_: None                    # noqa: E731
    try:
        start = time.perf_counter()
        save_checkpoint(engine, cfg, 1, 1, "0" * 64, quiet)
        sync = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (out / "ckpt" / "step_0000001").rglob("*") if f.is_file())
        if available_gib() < 1.2 * state_gib:       # other work on the machine grew meanwhile
            sys.exit(f"MemAvailable {available_gib():.1f} GiB is now short of the host copy "
                     f"({state_gib:.1f} GiB): run again when the machine is quieter")
        writer = AsyncWriter(quiet)
        stalls, totals = [], []
        for step in (2, 3):                    # the first allocates the host buffers, the next reuses them
            start = time.perf_counter()
            save_checkpoint(engine, cfg, step, step, "0" * 64, quiet, writer)
            stalls.append(time.perf_counter() - start)
            writer.wait(env.device)
            totals.append(time.perf_counter() - start)
            assert (out / "ckpt" / f"step_{step:07d}" / "complete.json").is_file()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"checkpoint {size / 2 ** 30:.2f} GiB")
    print(f"{'save':<46} {'seconds':>8} {'/ sync':>7}")
    print(f"{'synchronous (whole save)':<46} {sync:8.2f} {1:7.1%}")
    for name, stall, total in zip(("first (allocates its host buffers)", "next (reuses them)"), stalls, totals):
        print(f"{'async, ' + name + ': stall':<46} {stall:8.2f} {stall / sync:7.1%}")
        print(f"{'async, ' + name + ': until complete':<46} {total:8.2f} {total / sync:7.1%}")
    print(f"steady-state stall / synchronous save = {stalls[-1] / sync:.1%} (goal <= 10 %); load "
          f"average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
