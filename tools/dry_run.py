#!/usr/bin/env python3
"""Dry run of a training layout at cluster scale on one CPU: per-rank memory, pipeline balance
and communication per step, without a GPU and without allocating the model.

    python tools/dry_run.py --preset examples/8b/stage1_pretrain.yaml --world 64
    python tools/dry_run.py --preset 8b --world 256 parallel.tensor_parallel=8 parallel.pipeline_parallel=4

For every pipeline stage it joins a fake process group (torch's ``fake`` backend: collectives are
no-ops) as that stage's first rank, builds megatron-core's groups for the whole world, and builds
the real stage model on the meta device, so parameter counts are the code's, not a formula's.
Memory per rank and communication per step are estimates by the formulas of
megatron_vist2/cost/planner.py (its docstring; checked against measured memory by
benchmarks/memory_estimate.py). Exits 2 when a stage does not fit --gpu-memory-gib, with the numbers.
To rank all layouts of a preset by estimated throughput: tools/plan_layouts.py.
"""
import argparse
import sys

import torch
import torch.distributed as dist

from megatron_vist2.errors import UserError, run_cli

GIB = 2 ** 30


def stage_report(cfg, world: int, stage: int) -> dict:
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron_vist2.models.vist2 import Vist2Model
    from megatron_vist2.parallel.pipeline import stage_part
    from megatron_vist2.training.trainer import freeze
    p = cfg.parallel
    rank = stage * world // p.pipeline_parallel               # megatron order: pp outermost
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        ps.initialize_model_parallel(p.tensor_parallel, p.pipeline_parallel,
                                     create_gloo_process_groups=False)
        assert ps.get_pipeline_model_parallel_rank() == stage
        with torch.device("meta"):
            model = Vist2Model(cfg, part=stage_part(cfg))
        freeze(model, cfg.train.freeze)
        params = sum(t.numel() for t in model.parameters())
        trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
        vision = sum(t.numel() for t in model.front.vision.parameters()) if model.part.first else 0
        return {"stage": stage, "rank": rank, "layers": len(model.layers), "first": model.part.first,
                "last": model.part.last, "params": params, "trainable": trainable, "vision": vision}
    finally:
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="preset name or YAML file (a stage config)")
    ap.add_argument("--world", type=int, required=True, help="number of ranks (GPUs)")
    ap.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory per GPU (H100: 80)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tensor_parallel=8")
    args = ap.parse_args()
    if args.world < 1:
        ap.error(f"--world must be >= 1 (the number of ranks), got {args.world}")
    if not args.gpu_memory_gib > 0:
        ap.error(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib}")
    from megatron_vist2.config import data_parallel_size, load_config, validate
    from megatron_vist2.cost.flops import forward_flops
    from megatron_vist2.cost.planner import communication, memory
    from megatron_vist2.parallel import compat
    compat.install_cpu_shims()
    cfg = validate(load_config(args.preset, args.overrides), args.world)
    p = cfg.parallel
    dp = data_parallel_size(cfg, args.world)
    print(f"{args.preset} on {args.world} ranks: TP {p.tensor_parallel} x PP {p.pipeline_parallel} x "
          f"DP {dp}, ZeRO-{p.zero_stage}, micro-batch {p.micro_batch_size} x {cfg.data.seq_length} tokens, "
          f"global batch {p.global_batch_size}, activation checkpointing {cfg.train.activation_checkpointing}")
    f = forward_flops(cfg)
    rows, worst = [], None
    for stage in range(p.pipeline_parallel):
        r = stage_report(cfg, args.world, stage)
        mem, comm = memory(cfg, args.world, r), communication(cfg, args.world, r)
        per_row = r["layers"] / cfg.model.llm.num_layers * f.llm_linear_per_token * cfg.data.seq_length
        if r["first"]:
            per_row += (f.vision_per_image + f.aligner_per_image) * -(-cfg.data.seq_length // (
                cfg.model.chunk.text_tokens + cfg.model.visual_tokens_per_chunk))
        rows.append((r, mem, comm, per_row))
        total = sum(mem.values())
        if worst is None or total > worst[1]:
            worst = (r, total, mem)
    mean_flops = sum(x[3] for x in rows) / len(rows)
    print(f"{'stage':>5} {'layers':>6} {'params/rank':>12} {'weights':>8} {'grads':>8} {'optim':>8} "
          f"{'activ.':>8} {'total GiB':>9} {'fwd load':>8} {'DP GiB/step':>11} {'TP GiB/step':>11} {'PP GiB/step':>11}")
    for r, mem, comm, load in rows:
        print(f"{r['stage']:>5} {r['layers']:>6} {r['params']:>12,} {mem['weights'] / GIB:>8.1f} "
              f"{mem['gradients'] / GIB:>8.1f} {mem['optimizer'] / GIB:>8.1f} {mem['activations'] / GIB:>8.1f} "
              f"{sum(mem.values()) / GIB:>9.1f} {load / mean_flops:>7.2f}x {comm['data parallel'] / GIB:>11.2f} "
              f"{comm['tensor parallel'] / GIB:>11.2f} {comm['pipeline'] / GIB:>11.2f}")
    r, total, mem = worst
    if total > args.gpu_memory_gib * GIB:
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in mem.items())
        raise UserError(f"does not fit: pipeline stage {r['stage']} needs {total / GIB:.1f} GiB per rank "
                        f"({parts}) > --gpu-memory-gib {args.gpu_memory_gib:g}; raise ZeRO, tensor or "
                        f"pipeline parallelism, or use train.activation_checkpointing=full")
    print(f"fits: the largest stage needs {total / GIB:.1f} GiB of {args.gpu_memory_gib:g} GiB per rank "
          f"(estimate; formulas: megatron_vist2/cost/planner.py)")


if __name__ == "__main__":
    run_cli(main)
    sys.exit(0)
