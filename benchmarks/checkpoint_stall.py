#!/usr/bin/env python3
"""Training stall of an asynchronous checkpoint save against the synchronous save, same process,
same state (docs/checkpoints.md, "Asynchronous saves").

    python benchmarks/checkpoint_stall.py [--llm-layers 8] [--tokenizer data/tokenizer/sotu.model]

The 0.6b preset (fp32, one process, ZeRO-0, the bundled 2,048-token vocabulary) with Adam's
moments filled by one optimizer step on zero gradients (the state a real step leaves: weights and
two moments, 12 bytes per parameter), without data or activations. ``--llm-layers`` cuts the LLM
to fit the machine: the asynchronous save holds a second copy of the state in host memory, so
the peak is about twice the checkpoint (the full 28 layers need about 20 GiB; the script stops
before building anything when MemAvailable is short).

Measured, each save into a fresh directory: sync = the whole ``save_checkpoint`` (every file
written, complete.json, rename, latest); async stall = what ``save_checkpoint`` blocks the
training thread for (the finiteness check, the copy into host memory, the small files), and
async total = until the background writer is done and the checkpoint complete. Printed: the
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
    args = ap.parse_args()
    print(f"machine: {machine()} | load average {os.getloadavg()[0]:.1f}")

    import torch
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.models.size import analytic_parameter_counts
    from megatron_vist2.parallel.distributed import init_distributed
    from megatron_vist2.training.async_checkpoint import AsyncWriter
    from megatron_vist2.training.checkpoint import save_checkpoint
    from megatron_vist2.training.trainer import build_model, make_engine

    out = Path(tempfile.mkdtemp(prefix="ckpt_stall_", dir="."))
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
        writer = AsyncWriter(quiet)
        start = time.perf_counter()
        save_checkpoint(engine, cfg, 2, 2, "0" * 64, quiet, writer)
        stall = time.perf_counter() - start
        writer.wait(env.device)
        total = time.perf_counter() - start
        assert (out / "ckpt" / "step_0000002" / "complete.json").is_file()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"checkpoint {size / 2 ** 30:.2f} GiB")
    print(f"{'save':<34} {'seconds':>8}")
    print(f"{'synchronous (whole save)':<34} {sync:8.2f}")
    print(f"{'asynchronous: training stall':<34} {stall:8.2f}")
    print(f"{'asynchronous: until complete':<34} {total:8.2f}")
    print(f"stall / synchronous save = {stall / sync:.1%} (goal <= 10 %); load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
