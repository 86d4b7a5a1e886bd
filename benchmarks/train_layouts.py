#!/usr/bin/env python3
"""Training step time and tokens/s for each parallel layout on 2 CPU ranks (tiny-cpu preset),
every layout launched through the real entry point (torchrun + launch.sh) in this run.

    python benchmarks/train_layouts.py [--steps 30] [--only "TP2, ZeRO-1" ...]

Step time is the mean over the last half of the steps (the first ones include warm-up).
"""
from common import layout_run_args, run_training

# name, tensor parallel, pipeline parallel, ZeRO stage, sequence parallel, micro-batch rows.
# Pipeline rows use micro-batches of 4 (4 per step instead of 2: a smaller pipeline bubble).
LAYOUTS = [("DP2, ZeRO-1", 1, 1, 1, False, 8), ("DP2, ZeRO-3", 1, 1, 3, False, 8),
           ("TP2, ZeRO-1", 2, 1, 1, False, 8), ("TP2, ZeRO-3", 2, 1, 3, False, 8),
           ("TP2+SP, ZeRO-1", 2, 1, 1, True, 8), ("PP2, ZeRO-1", 1, 2, 1, False, 4),
           ("PP2, ZeRO-3", 1, 2, 3, False, 4)]


def main():
    args, layouts = layout_run_args(30, LAYOUTS)
    print(f"tiny-cpu, 2 ranks, global batch 16 rows x 272 tokens, {args.steps} steps")
    base = None
    for name, tp, pp, zero, sp, micro in layouts:
        rc, stderr, log = run_training(2, [
            "--preset", "tiny-cpu", f"parallel.tensor_parallel={tp}", f"parallel.pipeline_parallel={pp}",
            f"parallel.zero_stage={zero}", f"parallel.micro_batch_size={micro}",
            f"parallel.sequence_parallel={str(sp).lower()}", f"train.steps={args.steps}",
            "train.log_interval=1", "train.eval_batches=1", "train.eval_interval=0"])
        if rc:
            print(f"{name}: failed\n{stderr[-2000:]}")
            continue
        tail = [e for e in log if "train/tokens_per_s" in e][args.steps // 2:]
        step = (tail[-1]["time"] - tail[0]["time"]) / (len(tail) - 1)     # wall clock per step
        tps = sum(e["train/tokens_per_s"] for e in tail) / len(tail)       # text + visual tokens
        base = base or step
        loss = [e["train/loss"] for e in log if "train/loss" in e][-1]
        print(f"{name:15s} {step:6.3f} s/step  {tps:9,.0f} tokens/s  ({base / step:.2f}x DP2 ZeRO-1)  "
              f"final loss {loss:.4f}")


if __name__ == "__main__":
    main()
