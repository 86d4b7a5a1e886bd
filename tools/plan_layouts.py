#!/usr/bin/env python3
"""Rank the TP x PP x DP layouts of a preset on a cluster by estimated throughput.

    python tools/plan_layouts.py --preset 8b --world 64
    python tools/plan_layouts.py --preset examples/8b/stage1_pretrain.yaml --world 256 --network-gbps 25

Every candidate (TP 1..8 inside a node, PP dividing the layers, ZeRO 1-3, micro-batch 1-8, with
and without full recomputation) is validated like a real run, its memory per rank estimated, the
ones that fit --usable-memory of --gpu-memory-gib ranked by estimated tokens/s. Formulas and assumptions:
megatron_vist2/cost/planner.py. Check a chosen layout with tools/dry_run.py (the real stage
models on the meta device), then measure it: the estimate ranks layouts, it does not promise a
throughput.
"""
import argparse

from megatron_vist2.errors import UserError, run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="preset name or YAML file (a stage config)")
    ap.add_argument("--world", type=int, required=True, help="number of GPUs")
    ap.add_argument("--top", type=int, default=10, help="how many layouts to print")
    from megatron_vist2.cost.planner import Cluster
    defaults = Cluster(world=1)
    for field in ("gpus_per_node", "gpu_memory_gib", "peak_tflops", "efficiency", "nvlink_gbps",
                  "network_gbps", "dp_overlap", "usable_memory"):
        ap.add_argument("--" + field.replace("_", "-"), type=type(getattr(defaults, field)),
                        default=getattr(defaults, field), help=f"default {getattr(defaults, field)}")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.global_batch_size=1024")
    args = ap.parse_args()
    if args.world < 1:
        ap.error(f"--world must be >= 1 (the number of GPUs), got {args.world}")
    if args.top < 1:
        ap.error(f"--top must be >= 1, got {args.top}")
    for field in ("gpus_per_node", "gpu_memory_gib", "peak_tflops", "efficiency", "nvlink_gbps", "network_gbps"):
        if not getattr(args, field) > 0:
            ap.error(f"--{field.replace('_', '-')} must be > 0, got {getattr(args, field)}")
    from megatron_vist2.config import load_config
    from megatron_vist2.cost.planner import plan_layouts
    cfg = load_config(args.preset, args.overrides)
    cluster = Cluster(world=args.world, **{k: getattr(args, k) for k in (
        "gpus_per_node", "gpu_memory_gib", "peak_tflops", "efficiency", "nvlink_gbps", "network_gbps",
        "dp_overlap", "usable_memory")})
    plans = plan_layouts(cfg, cluster, args.top)
    if not plans:
        raise UserError(f"no layout of {args.preset} fits {args.world} GPUs of {args.gpu_memory_gib:g} GiB "
                        f"(global batch {cfg.parallel.global_batch_size}, sequence {cfg.data.seq_length}); "
                        f"use more GPUs, a smaller global batch or sequence, or a smaller preset")
    print(f"{args.preset} on {args.world} GPUs ({cluster.gpus_per_node} per node, {cluster.gpu_memory_gib:g} GiB, "
          f"{cluster.peak_tflops:g} TFLOP/s x {cluster.efficiency:g}), global batch {cfg.parallel.global_batch_size}"
          f" x {cfg.data.seq_length} tokens; estimates, fastest first")
    print(f"{'#':>2} {'TP':>2} {'PP':>2} {'DP':>4} {'ZeRO':>4} {'micro':>5} {'recompute':>9} {'GiB/rank':>8} "
          f"{'s/step':>7} {'tokens/s':>10} {'compute':>7} {'TP comm':>7} {'DP comm':>7} {'PP comm':>7}")
    for i, p in enumerate(plans, 1):
        o = dict(x.split("=") for x in p.overrides)
        tp, pp = int(o["parallel.tensor_parallel"]), int(o["parallel.pipeline_parallel"])
        t = p.times
        print(f"{i:>2} {tp:>2} {pp:>2} {args.world // (tp * pp):>4} {o['parallel.zero_stage']:>4} "
              f"{o['parallel.micro_batch_size']:>5} {o['train.activation_checkpointing']:>9} {p.memory_gib:>8.1f} "
              f"{p.step_s:>7.2f} {p.tokens_per_s:>10,.0f} {t['compute']:>7.2f} {t['tensor parallel']:>7.2f} "
              f"{t['data parallel']:>7.2f} {t['pipeline']:>7.2f}")
    print(f"best: python tools/dry_run.py --preset {args.preset} --world {args.world} "
          + " ".join([*args.overrides, *plans[0].overrides]))


if __name__ == "__main__":
    run_cli(main)
