#!/usr/bin/env python3
"""Write a PNG of what the model sees: renders of chunks, stacked (their text is printed to the console;
characters the render font cannot draw are named in a warning, as at training start-up).

    python tools/render_preview.py --text "Any text you like" --out preview.png
    python tools/render_preview.py --preset tiny-cpu --chunks 6 --out preview.png   # from the data
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.renderer import Renderer
from megatron_vist2.errors import UserError, run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--text", action="append", help="text to render (repeatable)")
    ap.add_argument("--chunks", type=int, default=4, help="chunks of the first training document")
    ap.add_argument("--scale", type=int, default=3, help="pixel magnification in the PNG")
    ap.add_argument("--out", default="render_preview.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    for flag in ("chunks", "scale"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    cfg = validate(load_config(args.preset, args.overrides))
    renderer = Renderer.from_model_config(cfg.model)
    texts = args.text
    if not texts:
        from megatron_vist2.data.indexed import open_indexed
        from megatron_vist2.data.tokenizer import load_tokenizer
        tok = load_tokenizer(cfg.data.tokenizer)
        dataset = open_indexed(cfg.data.train_prefix, tok)
        doc = np.array(dataset.tokens(0))      # copy: the mmap closes when the dataset object goes
        L = cfg.model.chunk.text_tokens
        texts = [tok.decode(doc[i * L:(i + 1) * L]) for i in range(args.chunks)]
    import sys
    from megatron_vist2.data.font_coverage import warn_missing_glyphs     # the rule training uses
    warn_missing_glyphs(cfg.model.render, texts, "the previewed text", lambda m: print(m, file=sys.stderr))
    gap = np.full((2, renderer.width), 128, np.uint8)
    tiles = []
    for t in texts:
        tiles += [renderer.render(t), gap]
        print(f"chunk {len(tiles) // 2}: {t!r}")
    image = Image.fromarray(np.concatenate(tiles[:-1]))
    image = image.resize((image.width * args.scale, image.height * args.scale), Image.NEAREST)
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
    except (OSError, ValueError) as exc:        # a file in the way, no permission, unknown extension
        raise UserError(f"--out {args.out} cannot be written ({getattr(exc, 'strerror', None) or exc}); "
                        f"give a .png path in a writable directory") from None
    print(f"wrote {args.out} ({len(texts)} renders of {renderer.height}x{renderer.width}, x{args.scale})")


if __name__ == "__main__":
    run_cli(main)
