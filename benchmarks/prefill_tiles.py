#!/usr/bin/env python3
"""The attention of the engine's VIST2 prefill (inference/engine.py ``_visual_tile``), one layer,
measured in one run: n visual tokens (m per chunk) where chunk j sees the visual tokens of chunks
<= j. Variants: one forward with a dense mask over every key (the old groups were this, over
every cache slot), tiles of T queries each against the keys before the tile's end (the mask
[T, visible]: what the engine runs with prefill_block = T), and SDPA's causal kernel over the same
n tokens (the work a block-causal kernel needs, for scale). Every variant's output is checked
against the dense one; times are medians, ratios to the dense mask printed.

    python benchmarks/prefill_tiles.py [--visual 2048] [--tiles 16,64,128,256,512] [--threads 1]
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import machine


def median_ms(fn, repeat):
    fn()                                                   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visual", type=int, default=2048, help="visual tokens (2,048: an 8K prompt at rho = 4)")
    ap.add_argument("--m", type=int, default=16, help="visual tokens per chunk")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64, help="defaults: bench-cpu's LLM")
    ap.add_argument("--tiles", default="16,64,128,256,512")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    n, m = args.visual, args.m
    tiles = [int(t) for t in args.tiles.split(",")]
    if n % m or any(t % m or t < m for t in tiles):
        ap.error(f"--visual and every tile must be multiples of --m ({m})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q = torch.randn(1, args.heads, n, args.head_dim)
    k, v = (torch.randn(1, args.kv_heads, n, args.head_dim) for _ in range(2))
    idx = torch.arange(n)
    allowed = idx[None, :] // m <= idx[:, None] // m           # [query, key]: chunk of key <= chunk of query

    def sdpa(qq, kk, vv, mask=None, causal=False):
        return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=causal, enable_gqa=True)

    def tiled(t):
        return torch.cat([sdpa(q[:, :, a:a + t], k[:, :, :a + t], v[:, :, :a + t], allowed[a:a + t, :a + t])
                          for a in range(0, n, t)], dim=2)

    ref = sdpa(q, k, v, allowed)
    print(f"machine: {machine()}; {args.threads} thread(s)")
    print(f"{n} visual tokens, m = {m}, {args.heads} heads ({args.kv_heads} KV) x {args.head_dim}, "
          f"median of {args.repeat}")
    dense = median_ms(lambda: sdpa(q, k, v, allowed), args.repeat)
    print(f"{'dense mask [n, n]':28s} {dense:9.1f} ms  1.00x")
    for t in tiles:
        err = (tiled(t) - ref).abs().max().item()
        ms = median_ms(lambda: tiled(t), args.repeat)
        print(f"{f'tiles of {t} (prefix keys)':28s} {ms:9.1f} ms  {ms / dense:.2f}x  (max |diff| {err:.1e})")
    ms = median_ms(lambda: sdpa(q, k, v, causal=True), args.repeat)
    print(f"{'causal kernel (scale)':28s} {ms:9.1f} ms  {ms / dense:.2f}x")


if __name__ == "__main__":
    main()
