#!/usr/bin/env python3
"""Loader throughput (read + pack + render) at the paper config, and what models consume.

Builds rows of 8192 tokens with L = 64 tokens per 128 x 128 image from the bundled corpus and
times ``dataset[g]`` in this process (one core), then a DataLoader with 2 workers. Prints text
tokens/s per worker core next to the tokens/s an 8B and a 0.6B preset consume per H100 at 40 %
MFU: 3x the forward FLOPs (forward + backward) of the LLM's matmuls over the L + m tokens of each
chunk (attention excluded), plus the ViT and the aligner per chunk (cost/flops.py).

    python benchmarks/loader.py [--rows 40]
"""
import argparse
import time

from torch.utils.data import DataLoader

from common import machine
from megatron_vist2.config import load_config
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.cost.flops import forward_flops

H100_BF16_PEAK = 989e12


def consumed_tokens_per_s(preset: str, mfu: float = 0.4) -> float:
    """Text tokens/s one GPU trains at ``mfu``: 3x forward FLOPs of the LLM over the L + m tokens of
    a chunk, the ViT and the aligner (cost/flops.py: forward_flops), per text token."""
    cfg = load_config(preset)
    m = cfg.model
    L, vis = m.chunk.text_tokens, m.visual_tokens_per_chunk
    f = forward_flops(cfg)
    per_chunk = 3 * (f.llm_linear_per_token * (L + vis) + f.vision_per_image + f.aligner_per_image)
    return mfu * H100_BF16_PEAK / (per_chunk / L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--prefix", default="data/sotu_train")
    ap.add_argument("--rows", type=int, default=40)
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    cfg = load_config("0.6b", [f"model.llm.vocab_size={tok.vocab_size}", "data.seq_length=8192"])
    ds = PackedVist2Dataset(open_indexed(args.prefix, tok), tok, cfg, seed=0)
    print(f"machine: {machine()}")
    print(f"rows of {cfg.data.seq_length} tokens, L = {ds.L}, m = {ds.m}, 128x128 renders")
    ds[0]                                                   # font and first glyphs
    t0, text = time.perf_counter(), 0
    for g in range(1, args.rows + 1):
        text += int((ds[g]["kind"] == 0).sum())
    one_core = text / (time.perf_counter() - t0)
    loader = DataLoader(ds, batch_size=1, sampler=range(args.rows + 1, 3 * args.rows + 1),
                        num_workers=2, collate_fn=collate, prefetch_factor=4)
    t0, text = time.perf_counter(), 0
    for batch in loader:
        text += int((batch.layout.kind == 0).sum())
    two_workers = text / (time.perf_counter() - t0)
    print(f"one process (one core):      {one_core:10,.0f} text tokens/s")
    print(f"DataLoader, 2 workers:       {two_workers:10,.0f} text tokens/s (includes worker start-up)")
    for preset in ("0.6b", "8b"):
        need = consumed_tokens_per_s(preset)
        print(f"{preset} at 40 % MFU on an H100 consumes {need:9,.0f} text tokens/s per GPU: "
              f"{need / one_core:.2f} loader cores per GPU")


if __name__ == "__main__":
    main()
