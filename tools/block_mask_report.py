#!/usr/bin/env python3
"""What a block-sparse attention kernel computes on packed VIST2 rows, in each row order, against
document-causal attention over the same rows (hardware independent: counted, not timed).

    python tools/block_mask_report.py --preset 0.6b --data data/sotu_train --seq 8192
    python tools/block_mask_report.py --preset 8b --synthetic            # one long document per row

For each physical row order (data/packing.py): the (query, key) pairs the VIST2 rule allows, and
the 128 x 128 tiles that are full (computed without the mask function), partial (computed with
it) and empty (skipped), with their ratios to document-causal attention (a text-only causal model
trained on the same rows). Rows are drawn evenly over the packed dataset (--rows). Only document
lengths are read from --data (any tokenizer; L and m come from the preset).
"""
import argparse

import numpy as np

from megatron_vist2.errors import UserError, run_cli


def document_lengths(prefix: str) -> np.ndarray:
    from pathlib import Path
    if not Path(prefix + ".idx").is_file():
        raise UserError(f"--data {prefix}: no {prefix}.idx; give the prefix of a dataset written by "
                        f"tools/preprocess_data.py (without .bin/.idx)")
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    ds = IndexedDataset(prefix)
    return np.array(ds.sequence_lengths)          # a copy: the mmap goes with ``ds``


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="0.6b", help="preset name or YAML file (L, m, seq_length)")
    ap.add_argument("--data", help="indexed dataset prefix (default: the config's data.train_prefix)")
    ap.add_argument("--synthetic", action="store_true", help="rows of one document longer than a row")
    ap.add_argument("--seq", type=int, help="row length (default: the config's data.seq_length)")
    ap.add_argument("--rows", type=int, default=8, help="rows to count, drawn evenly (default 8)")
    ap.add_argument("--readback", type=float, help="read-back share (default: data.readback_fraction)")
    ap.add_argument("--block", type=int, default=128, help="tile size (default 128, FlexAttention's)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args()
    from megatron_vist2.config import load_config
    from megatron_vist2.data.packing import ORDERS, pack_segments, segment_document
    from megatron_vist2.cost.block_sparsity import rows_report
    cfg = load_config(args.preset, args.overrides)
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    seq = args.seq or cfg.data.seq_length
    rb = cfg.data.readback_fraction if args.readback is None else args.readback
    if args.rows < 1 or seq < L + m:
        raise UserError(f"--rows must be >= 1 and --seq >= L + m = {L + m}")
    rng = np.random.default_rng(0)
    lengths = [2 * seq] * args.rows if args.synthetic else document_lengths(args.data or cfg.data.train_prefix)
    segs = [s for d, n in enumerate(lengths) for s in segment_document(d, int(n), L, m, seq, rb, rng)]
    rows = pack_segments(segs, L, m, seq)
    if not args.synthetic:
        rows = rows[:-1] or rows                  # the last row is the remainder, not a full row
    picked = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, args.rows).astype(int))]
    source = "synthetic (one document per row)" if args.synthetic else (args.data or cfg.data.train_prefix)
    print(f"{source}: {len(picked)} of {len(rows)} rows of {seq} tokens, L = {L}, m = {m}, "
          f"read-back share {rb:g}, {args.block} x {args.block} tiles")
    counts = rows_report(picked, L, m, seq, ORDERS, args.block)
    base = counts["document-causal"]
    print(f"{'order':16s} {'pairs':>13s} {'x doc-causal':>12s} {'full':>7s} {'partial':>7s} {'empty':>7s} "
          f"{'computed':>8s} {'x doc-causal':>12s}")
    for name, c in counts.items():
        print(f"{name:16s} {c.pairs:13,d} {c.pairs / base.pairs:12.3f} {c.full:7d} {c.partial:7d} "
              f"{c.empty:7d} {c.computed:8d} {c.computed / base.computed:12.3f}")


if __name__ == "__main__":
    run_cli(main)
