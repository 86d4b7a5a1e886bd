#!/usr/bin/env python3
"""Write a PNG of what the model sees: renders of chunks, stacked (their text is printed to the console).

    python tools/render_preview.py --text "Any text you like" --out preview.png
    python tools/render_preview.py --preset tiny-cpu --chunks 6 --out preview.png   # from the data
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.renderer import Renderer
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--text", action="append", help="text to render (repeatable)")
    ap.add_argument("--chunks", type=int, default=4, help="chunks of the first training document")
    ap.add_argument("--scale", type=int, default=3, help="pixel magnification in the PNG")
    ap.add_argument("--out", default="render_preview.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = validate(load_config(args.preset, args.overrides))
    renderer = Renderer.from_model_config(cfg.model)
    texts = args.text
    if not texts:
        from megatron_vist2.data.indexed import open_indexed
        from megatron_vist2.data.tokenizer import load_tokenizer
        tok = load_tokenizer(cfg.data.tokenizer)
        dataset = open_indexed(cfg.data.train_prefix, tok)
        doc = np.array(dataset[0])      # copy: the mmap closes when the dataset object goes
        L = cfg.model.chunk.text_tokens
        texts = [tok.decode(doc[i * L:(i + 1) * L]) for i in range(args.chunks)]
    gap = np.full((2, renderer.width), 128, np.uint8)
    tiles = []
    for t in texts:
        tiles += [renderer.render(t), gap]
        print(f"chunk {len(tiles) // 2}: {t!r}")
    image = Image.fromarray(np.concatenate(tiles[:-1]))
    image = image.resize((image.width * args.scale, image.height * args.scale), Image.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({len(texts)} renders of {renderer.height}x{renderer.width}, x{args.scale})")


if __name__ == "__main__":
    run_cli(main)
