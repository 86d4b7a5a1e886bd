#!/usr/bin/env python3
"""The planner's memory estimate (megatron_vist2/cost/planner.py) against measured memory.

    python benchmarks/memory_estimate.py [--steps 3]

Each layout trains a model large enough that its states and activations dominate the process
(LLM 8 x 512, FFN 1536, about 25 M parameters; fp32 on the CPU) through the real entry point,
with glibc's malloc set to return freed blocks (MALLOC below).
Measured: rank 0's peak memory (peak resident set on the CPU, max allocated on a GPU) minus what
the process held just before the model was built (the runtime, libraries and datasets). Estimate:
the planner's weights + gradients + optimizer + activations for rank 0's stage. Needs the data
of the main job (examples/tiny_cpu/prepare_data.sh).
"""
import sys

from common import layout_run_args, run_training

MODEL = ["model.llm.num_layers=8", "model.llm.hidden_size=512", "model.llm.ffn_hidden_size=1536",
         "model.llm.num_heads=8", "model.llm.num_kv_heads=4", "model.llm.head_dim=64",
         "train.dtype=fp32", "data.num_workers=0"]
# glibc's dynamic mmap threshold keeps freed large blocks in the heap, so the resident set of a
# long-running process overstates its live tensors (by up to 2x here); a fixed threshold returns
# them, and the resident set then follows live memory as a GPU's allocated counter does.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
LAYOUTS = [   # name, ranks, overrides
    ("1 rank, ZeRO-1", 1, ["parallel.zero_stage=1"]),
    ("DP2, ZeRO-3", 2, ["parallel.zero_stage=3"]),
    ("TP2, ZeRO-1", 2, ["parallel.tensor_parallel=2", "parallel.zero_stage=1"]),
]


def main():
    args, layouts = layout_run_args(3, LAYOUTS)
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.cost.planner import memory, stage_sizes
    print(f"{'layout':<16} {'estimate GiB':>12} {'(weights':>8} {'grads':>6} {'optim':>6} {'activ.)':>8} "
          f"{'measured GiB':>12} {'estimate/measured':>17}")
    for name, ranks, overrides in layouts:
        rc, stderr, rows = run_training(ranks, [
            "--preset", "tiny-cpu", *MODEL, *overrides, f"train.steps={args.steps}", "train.log_interval=1",
            "train.eval_interval=0", "train.eval_batches=1", "logging.tensorboard=false"], MALLOC)
        if rc:
            sys.exit(f"{name} failed:\n{stderr[-3000:]}")
        before = next(r["train/memory_before_model_gb"] for r in rows if "train/memory_before_model_gb" in r)
        peak = max(r["train/peak_memory_gb"] for r in rows if "train/peak_memory_gb" in r)
        cfg = validate(load_config("tiny-cpu", [*MODEL, *overrides]), ranks)
        est = memory(cfg, ranks, stage_sizes(cfg)[0])
        total = sum(est.values()) / 2 ** 30
        measured = peak - before
        print(f"{name:<16} {total:>12.3f} {est['weights'] / 2**30:>8.3f} {est['gradients'] / 2**30:>6.3f} "
              f"{est['optimizer'] / 2**30:>6.3f} {est['activations'] / 2**30:>8.3f} {measured:>12.3f} "
              f"{total / measured:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
