#!/usr/bin/env python3
"""The VIST2 attention in both physical row orders against plain causal attention at the same
length: one layer's attention (a preset's heads and head size), forward + backward (forward only on
a CPU), compiled flex_attention for every mask (the VIST2 rule's block mask on the interleaved and
on the blocked row, and a causal block mask), plus SDPA's causal kernel as a reference; every
length in one run, ratios to causal (flex) printed.

    python benchmarks/attention_cost.py --preset bench-cpu --seqs 2048,8192   # CPU: forward
    python benchmarks/attention_cost.py --preset 8b --seqs 8192 --sdpa-mask   # on a GPU

``--sdpa-mask`` also times SDPA with the VIST2 rule as a dense boolean mask (what
``model.attention_backend=sdpa`` runs) under each of SDPA's kernels that accepts it (cuDNN,
memory-efficient, math), with its peak memory, or the reason a kernel refuses it: which dense
path a GPU would fall back to (docs/trust.md, GPU finding 6).

The row is one long document (paper chunking at the preset's L and m), laid out by the packer
(data/packing.py) in each order; the tile counts beside the times come from
cost/block_sparsity.py.
"""
import argparse
import time

import torch

from common import machine

def timed(fn, steps: int) -> float:
    fn()                                       # compiles (once per mask structure and length)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def row(L: int, m: int, seq: int, order: str):
    import numpy as np
    from megatron_vist2.data.packing import pack_segments, segment_document
    from megatron_vist2.cost.block_sparsity import row_layout
    segs = segment_document(0, 2 * seq, L, m, seq, 0.0, np.random.default_rng(0))
    return row_layout(pack_segments(segs, L, m, seq)[0], L, m, seq, order)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="0.6b")
    ap.add_argument("--seqs", default="2048,8192", help="row lengths, comma-separated")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sdpa-mask", action="store_true", help="also SDPA with the dense VIST2 mask, per kernel")
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from megatron_vist2.config import load_config
    from megatron_vist2.models.attention import block_mask, dense_mask
    from megatron_vist2.cost.block_sparsity import block_counts
    cfg = load_config(args.preset)
    llm = cfg.model.llm
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    backward = dev == "cuda"                  # flex_attention has no backward on the CPU
    print(f"machine: {machine()} | {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}")
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    print(f"{args.preset}: {llm.num_heads} heads x {llm.head_dim}, KV heads {llm.num_kv_heads}, "
          f"L = {L}, m = {m}, {dtype}, "
          f"{'forward + backward' if backward else 'forward only (no flex backward on a CPU)'}, "
          f"median of {args.steps}")
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = llm.num_heads != llm.num_kv_heads
    for seq in (int(x) for x in args.seqs.split(",")):
        shape = (1, llm.num_heads, seq, llm.head_dim)
        kv_shape = (1, llm.num_kv_heads, seq, llm.head_dim)
        q = torch.randn(shape, device=dev, dtype=dtype, requires_grad=backward)
        k = torch.randn(kv_shape, device=dev, dtype=dtype, requires_grad=backward)
        v = torch.randn(kv_shape, device=dev, dtype=dtype, requires_grad=backward)

        def run(mask):
            def step():
                out = flex(q, k, v, block_mask=mask, enable_gqa=gqa)
                if backward:
                    out.sum().backward()
            return step

        def sdpa_causal():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            if backward:
                out.sum().backward()

        causal = create_block_mask(lambda b, h, qi, ki: ki <= qi, 1, None, seq, seq, device=dev)
        t_causal = timed(run(causal), args.steps)
        print(f"\n{seq} tokens")
        print(f"  causal (flex)             {t_causal * 1e3:9.2f} ms   1.00x")
        for order in ("interleaved", "blocked"):
            layout = row(L, m, seq, order).to(dev)
            c = block_counts(layout.to("cpu"))
            t = timed(run(block_mask(layout)), args.steps)
            print(f"  VIST2 {order:11s} (flex) {t * 1e3:9.2f} ms   {t / t_causal:.2f}x   tiles: "
                  f"{c.full} full + {c.partial} partial of {(seq // 128) * (seq // 128 + 1) // 2} causal")
        t_sdpa = timed(sdpa_causal, args.steps)
        print(f"  causal (sdpa)             {t_sdpa * 1e3:9.2f} ms   {t_sdpa / t_causal:.2f}x")
        if args.sdpa_mask:
            dense = dense_mask(row(L, m, seq, "interleaved").to(dev))
            for kernel in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
                def sdpa_masked():
                    with sdpa_kernel([kernel]):
                        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense,
                                                                               enable_gqa=gqa)
                    if backward:
                        out.sum().backward()
                name = f"VIST2 dense mask (sdpa {kernel.name.lower()})"
                try:
                    if dev == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t = timed(sdpa_masked, args.steps)
                    peak = f", peak {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if dev == "cuda" else ""
                    print(f"  {name:25s} {t * 1e3:9.2f} ms   {t / t_causal:.2f}x{peak}")
                except RuntimeError as e:                  # the kernel refuses this mask / GQA / device
                    print(f"  {name:25s} not run: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
