#!/usr/bin/env python3
"""Rendering speed at the paper config (L = 64 tokens per 128 x 128 image), one core.

Prints chunks/s of: a naive Pillow baseline (one anti-aliased draw.text per word, textlength
wrapping, fixed font size), the reference renderer (one draw.text per glyph) and the fast
renderer (cold: empty caches; warm: caches filled by earlier chunks), all in this run.

    python benchmarks/render.py [--tokenizer data/tokenizer/sotu.model] [--chunks 3000]
"""
import argparse
import time

from PIL import Image, ImageDraw

from common import machine, paper_chunks
from megatron_vist2.config import load_config
from megatron_vist2.data.renderer import ReferenceRenderer, Renderer, load_font


def naive(text, font, H, W, margin=2):
    image = Image.new("L", (W, H), 255)
    draw = ImageDraw.Draw(image)
    line_h = sum(font.getmetrics())
    space = draw.textlength(" ", font=font)
    x, y = margin, margin
    for word in text.split():
        w = draw.textlength(word, font=font)
        if x + w > W - margin and x > margin:
            x, y = margin, y + line_h
        draw.text((x, y), word, font=font, fill=0)
        x += w + space
    return image


def rate(fn, texts):
    t0 = time.perf_counter()
    for t in texts:
        fn(t)
    return len(texts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--chunks", type=int, default=3000)
    args = ap.parse_args()
    cfg = load_config("0.6b").model                      # paper config: 128 x 128, L = 64, size 12 fit
    H, W, L = cfg.chunk.image_height, cfg.chunk.image_width, cfg.chunk.text_tokens
    texts = paper_chunks(args.tokenizer, L, 3 * args.chunks)
    cold, warm, base = texts[:args.chunks], texts[args.chunks:2 * args.chunks], texts[2 * args.chunks:]
    ref, fast = ReferenceRenderer.from_model_config(cfg), Renderer.from_model_config(cfg)
    sizes = {}
    for t in base[:300]:
        size = fast.layout(t)[0].size
        sizes[size] = sizes.get(size, 0) + 1
    naive_size = max(sizes, key=sizes.get)               # the size fit mode picks most often
    font = load_font(cfg.render.font, naive_size)
    print(f"machine: {machine()}")
    print(f"paper config: {H}x{W} image, L = {L} tokens (~{sum(map(len, base)) / len(base):.0f} chars), "
          f"font {cfg.render.font}, fit sizes used {dict(sorted(sizes.items()))}")
    r_naive = rate(lambda t: naive(t, font, H, W), base[:1000])
    r_ref = rate(ref.render, base[:300])
    r_cold = rate(fast.render, cold)
    r_warm = rate(fast.render, warm)
    print(f"naive Pillow, one draw.text per word (size {naive_size}): {r_naive:8.0f} chunks/s")
    print(f"reference renderer (one draw.text per glyph):     {r_ref:8.0f} chunks/s")
    print(f"fast renderer, cold caches:                       {r_cold:8.0f} chunks/s  ({r_cold / r_naive:.1f}x naive)")
    print(f"fast renderer, warm caches:                       {r_warm:8.0f} chunks/s  ({r_warm / r_naive:.1f}x naive)")


if __name__ == "__main__":
    main()
