#!/usr/bin/env python3
"""The VIST2 attention against plain causal attention at the same length: one layer's attention
(a preset's heads and head size), forward + backward (forward only on a CPU), compiled flex_attention for both masks
(the VIST2 rule's block mask vs a causal block mask), plus SDPA's causal kernel as a reference.

    python benchmarks/attention_cost.py --preset 8b --seq 8192          # on a GPU (goal: <= 1.3x)
    python benchmarks/attention_cost.py --preset tiny-cpu --seq 1024    # on the CPU (slow compile)

The row is one document of chunks T_1 V_1 T_2 V_2 ... (L text + m visual tokens each), the
layout training rows have; the ratio is VIST2 time / causal time in the same process.
"""
import argparse
import time

import torch

from common import machine


def chunked_layout(seq: int, L: int, m: int):
    from megatron_vist2.models.attention import TEXT, VISUAL, TokenLayout
    kind, chunk = [], []
    i = 0
    while len(kind) < seq:
        kind += [TEXT] * L + [VISUAL] * m
        chunk += [i] * (L + m)
        i += 1
    kind, chunk = torch.tensor(kind[:seq])[None], torch.tensor(chunk[:seq])[None]
    zeros = torch.zeros_like(kind)
    return TokenLayout(doc=zeros, chunk=chunk, kind=kind, readback=zeros.bool(), position=zeros)


def timed(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="8b")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from megatron_vist2.config import load_config
    from megatron_vist2.models.attention import block_mask
    cfg = load_config(args.preset)
    llm = cfg.model.llm
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    print(f"machine: {machine()} | {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}")
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    layout = chunked_layout(args.seq, L, m)
    layout = type(layout)(**{k: v.to(dev) for k, v in vars(layout).items()})
    vist2 = block_mask(layout)
    causal = create_block_mask(lambda b, h, q, k: k <= q, 1, None, args.seq, args.seq, device=dev)
    shape = (1, llm.num_heads, args.seq, llm.head_dim)
    kv_shape = (1, llm.num_kv_heads, args.seq, llm.head_dim)
    backward = dev == "cuda"                  # flex_attention has no backward on the CPU
    q = torch.randn(shape, device=dev, dtype=dtype, requires_grad=backward)
    k = torch.randn(kv_shape, device=dev, dtype=dtype, requires_grad=backward)
    v = torch.randn(kv_shape, device=dev, dtype=dtype, requires_grad=backward)
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = llm.num_heads != llm.num_kv_heads

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

    t_vist2, t_causal, t_sdpa = (timed(f, args.steps) for f in (run(vist2), run(causal), sdpa_causal))
    density = vist2.sparsity() if hasattr(vist2, "sparsity") else float("nan")
    print(f"{args.preset}: {llm.num_heads} heads x {llm.head_dim}, KV heads {llm.num_kv_heads}, "
          f"{args.seq} tokens (L = {L}, m = {m}), {dtype}, "
          f"{'forward + backward' if backward else 'forward only (no flex backward on a CPU)'}, median of {args.steps}")
    print(f"  VIST2 mask (flex)   {t_vist2 * 1e3:9.2f} ms   block sparsity {density:.1f} %")
    print(f"  causal (flex)       {t_causal * 1e3:9.2f} ms   block sparsity {causal.sparsity():.1f} %")
    print(f"  causal (sdpa)       {t_sdpa * 1e3:9.2f} ms")
    print(f"  VIST2 / causal (flex) = {t_vist2 / t_causal:.2f}x   (goal at 8K on a GPU: <= 1.3x)")


if __name__ == "__main__":
    main()
