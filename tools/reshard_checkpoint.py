#!/usr/bin/env python3
"""Consolidate a sharded training checkpoint into one layout-free checkpoint.

    python tools/reshard_checkpoint.py --checkpoint runs/8b/checkpoints --out runs/8b/consolidated

Reads any layout the trainer writes (tensor x pipeline x data parallel, ZeRO 0-3) one parameter
at a time (files memory-mapped: only the slices a parameter needs are read) and writes full fp32
tensors - weights and, unless --weights-only, Adam's exp_avg / exp_avg_sq - to safetensors shards
of at most --shard-gb, one shard in memory at a time, with the step, consumed samples, learning-
rate schedule and config. The output is a checkpoint directory: training resumes from it in any
layout (checkpoint.load_dir=OUT, or checkpoint.init_from=OUT for the weights), and the export,
inspection and inference tools read it. Resuming the original checkpoint in a new layout works
directly too; this tool is for archiving, moving between clusters, and inspection.
"""
import argparse
import time

from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint dir (with 'latest') or a step dir")
    ap.add_argument("--out", required=True, help="a new (or empty) output checkpoint directory")
    ap.add_argument("--weights-only", action="store_true", help="leave out the optimizer state")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard")
    args = ap.parse_args()
    if args.shard_gb <= 0:
        ap.error(f"--shard-gb must be > 0, got {args.shard_gb}")
    from megatron_vist2.checkpoint.sources import KINDS, open_checkpoint, write_consolidated
    from megatron_vist2.errors import TokenizerError
    from megatron_vist2.checkpoint.format import check_writable_target
    from megatron_vist2.checkpoint.tokenizer_record import find_tokenizer
    from megatron_vist2.data.tokenizer import load_tokenizer
    check_writable_target(args.out)                # before reading anything
    start = time.time()
    source = open_checkpoint(args.checkpoint)
    names = source.names()
    print(f"{source.step_dir}: {len(names)} parameters, saved as {source.layout}")
    kinds = ("param",) if args.weights_only else KINDS

    def tensors():
        for i, name in enumerate(names):
            for kind in kinds:
                t = source.tensor(name, kind)
                if t is not None:              # frozen parameters have no optimizer state
                    yield name, kind, t
            if (i + 1) % 200 == 0:
                print(f"  {i + 1}/{len(names)} parameters read ({time.time() - start:.0f} s)")

    client = {k: source.client.get(k) for k in ("step", "consumed_samples", "tokenizer_sha256",
                                                  "global_steps", "global_samples")}
    meta = {"client": client, "source_layout": source.layout}
    if not args.weights_only:
        meta |= {"lr_scheduler": source.lr_scheduler, "optimizer_step": source.optimizer_step()}
    manifest = {"step": client["step"], "consumed_samples": client["consumed_samples"],
                "layout": None, "source_layout": source.layout,
                "tokenizer_sha256": client["tokenizer_sha256"]}
    try:                                       # carried along: exports of the output need it
        tokenizer = find_tokenizer(source.step_dir, source.config["data"]["tokenizer"],
                                   client["tokenizer_sha256"],
                                   identify=lambda p: load_tokenizer(p).sha256)
    except TokenizerError as exc:
        tokenizer = None
        print(f"note: the output will not carry the tokenizer ({exc})")
    out = write_consolidated(args.out, source.step_dir.name, tensors(), manifest, source.config,
                             meta, int(args.shard_gb * 2 ** 30), tokenizer=tokenizer)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2 ** 20:,.1f} MiB{', weights only' if args.weights_only else ''}) "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    run_cli(main)
