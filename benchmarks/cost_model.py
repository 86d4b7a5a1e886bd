#!/usr/bin/env python3
"""The cost model per preset (no measurement): forward FLOPs per text token of the LLM and of the
vision encoder + aligner, and the predicted prefill saving and KV saving at a given context.

    python benchmarks/cost_model.py [--context 8192]

Forward FLOPs: 2 x matmul parameters per token (LLM: every layer's Q, K, V, O, SwiGLU and the
output layer; ViT: per patch, plus attention 4 d P^2 per image); LLM attention over c keys adds
4 x layers x heads x head_dim x c per query. A VIST2 prefill of n tokens runs n/rho visual tokens
through the LLM plus n/L images through the ViT and aligner; the baseline runs n text tokens.
"""
import argparse

from megatron_vist2.config import available_presets, load_config, validate
from megatron_vist2.cost.flops import forward_flops


def per_token(cfg):
    f = forward_flops(cfg)
    vision = (f.vision_per_image + f.aligner_per_image) / cfg.model.chunk.text_tokens
    return f.llm_linear_per_token, f.llm_attention_per_key, vision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args()
    n = args.context
    print(f"{'preset':<10}{'LLM GFLOP/tok':>14}{'ViT+aligner GFLOP/tok':>23}{'ratio':>8}"
          f"{'prefill FLOPs VIST2/base':>26}{'KV VIST2/base':>15}")
    for name in available_presets():
        cfg = validate(load_config(name))
        L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
        lin, attn, vis = per_token(cfg)
        base = n * lin + attn * n * n / 2
        nv = n // L * m
        vist2 = nv * lin + attn * nv * nv / 2 + n * vis
        print(f"{name:<10}{lin / 1e9:>14.3f}{vis / 1e9:>23.3f}{vis / lin:>8.3f}"
              f"{vist2 / base:>26.3f}{(nv + L) / n:>15.3f}")
    print(f"(context {n} tokens; attention counted causal, n^2/2 query-key pairs)")


if __name__ == "__main__":
    main()
