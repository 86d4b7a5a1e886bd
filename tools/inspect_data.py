#!/usr/bin/env python3
"""Look at the data as the model gets it.

    python tools/inspect_data.py --preset tiny-cpu --stats                 # dataset statistics
    python tools/inspect_data.py --preset tiny-cpu --row 3 --out row.png   # one packed row as a picture
    python tools/inspect_data.py --preset tiny-cpu --check-render          # does every chunk fit its image, legibly?
    python tools/inspect_data.py --preset tiny-cpu-rho8 --ocr-grid         # the OCR head's grid this geometry needs
    python tools/inspect_data.py --preset tiny-cpu --verify                # full checksums of every file
    python tools/inspect_data.py --prefix data/sotu_train --verify         # one dataset, any config

--stats and --verify cover every dataset of a blend (data.train_prefix = "0.7 a 0.3 b"); --stats
lists, per dataset and per input source recorded in its manifest, documents, tokens and chunks.

The picture shows, for every visual block of the row, the rendered image next to the text it was
rendered from, and the row's attention mask (query down, key across): text->text in blue,
text->image in green, image->image in orange, padding self-attention in grey.
"""
import argparse
import sys
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate, parse_blend
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import DatasetError, run_cli
from megatron_vist2.models.attention import PAD, TEXT, VISUAL, dense_mask


def stats(ds: PackedVist2Dataset, name: str) -> None:
    L, m, S = ds.L, ds.m, ds.S
    segs = [s for row in ds.rows for s in row]
    used = sum(s.row_tokens(L, m) for s in segs)
    chunks = sum(s.num_chunks(L) for s in segs)
    rb = sum(sum(s.readback) for s in segs)
    text = sum(s.length for s in segs)
    images = sum(s.images(L) for s in segs)
    print(f"{name}: {len(ds.indexed)} documents, {text:,} text tokens, {chunks:,} chunks "
          f"({rb:,} in read-back mode), {images:,} images")
    print(f"  {len(ds.rows):,} rows of {S} tokens: {len(segs) / len(ds.rows):.2f} segments and "
          f"{images / len(ds.rows):.1f} images per row, padding {100 * (1 - used / (len(ds.rows) * S)):.2f} %")
    print(f"  L = {L} text tokens per chunk, m = {m} visual tokens, rho = {L // m}")


def source_stats(ds: PackedVist2Dataset) -> None:
    """Documents, tokens and chunks (of L tokens) per input source recorded in the manifest."""
    lengths = ds.indexed.lengths.astype(np.int64)
    for src in ds.indexed.manifest.get("sources", []):
        part = lengths[src["first_document"]:src["first_document"] + src["documents"]]
        chunks = int((-(-part // ds.L)).sum())
        print(f"  source {src['source']}: {src['documents']:,} documents, {int(part.sum()):,} tokens, "
              f"{chunks:,} chunks")


def verify(prefixes, tok) -> int:
    """Full checksums and consistency of every dataset; returns how many failed."""
    failed = 0
    for prefix in prefixes:
        try:
            docs = open_indexed(prefix, tok, verify="full")
            print(f"verified {prefix}: {len(docs):,} documents, {docs.manifest['num_tokens']:,} tokens, "
                  f"every file matches its checksum")
        except DatasetError as exc:
            failed += 1
            print(f"FAILED {prefix}: {exc}", file=sys.stderr)
    return failed


def check_render(ds: PackedVist2Dataset) -> int:
    """Lay out every chunk of the dataset; print the font sizes used (with their glyph advance and
    the share drawn below model.render.min_legible_advance); return the overflow count."""
    import warnings
    from collections import Counter
    from megatron_vist2.data.renderer import IllegibleRenderWarning, advance, chunk_text, load_font
    from megatron_vist2.errors import RenderOverflowError
    sizes, failed, first = Counter(), 0, None
    L = ds.L
    r = ds.renderer.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllegibleRenderWarning)      # counted below instead
        for d in range(len(ds.indexed)):
            ids = ds.indexed.tokens(d)
            for start in range(0, len(ids), L):
                text = chunk_text(ds.tokenizer.decode(ids[start:start + L]))
                try:
                    sizes[ds.renderer.layout(text)[0].size] += 1
                except RenderOverflowError:
                    failed += 1
                    first = first or (d, start, text)
    total = sum(sizes.values()) + failed
    adv = {s: advance(load_font(r.font, s), "0") for s in sizes}
    shares = ", ".join(f"{s} pt ({adv[s]} px): {n:,} ({n / total:.1%})" for s, n in sorted(sizes.items()))
    small = sum(n for s, n in sizes.items() if adv[s] < r.min_legible_advance)
    print(f"check-render: {total:,} chunks in {ds.renderer.height} x {ds.renderer.width}, font size (glyph "
          f"advance): {shares}; {failed} do not fit; {small:,} ({small / max(total, 1):.1%}) below the "
          f"legible advance of {r.min_legible_advance} px (model.render.min_legible_advance)")
    if first:
        print(f"  first that does not fit: document {first[0]}, token {first[1]}: {first[2]!r}")
        print("  fix: lower model.render.min_font_size or line_spacing, or enlarge the image")
    return failed


def mask_picture(sample, context: str = "vist2") -> Image.Image:
    batch = collate([sample])
    allowed = dense_mask(batch.layout, context)[0, 0].numpy()      # the rule of model.context
    kind = sample["kind"]
    colors = np.full(allowed.shape + (3,), 255, np.uint8)
    q, k = kind[:, None], kind[None, :]
    for (qk, kk), rgb in {((TEXT, TEXT)): (40, 90, 200), ((TEXT, VISUAL)): (40, 160, 60),
                          ((VISUAL, VISUAL)): (230, 140, 30), ((PAD, PAD)): (160, 160, 160)}.items():
        colors[allowed & (q == qk) & (k == kk)] = rgb
    return Image.fromarray(colors)


def row_picture(ds: PackedVist2Dataset, g: int) -> Image.Image:
    sample = ds[g]
    segments = ds.rows[ds.row_index(g)]
    toks = [ds.indexed.tokens(s.doc_index, s.start, s.length) for s in segments]
    from megatron_vist2.data.packing import assemble_row
    texts = [ds.tokenizer.decode(c) for c in assemble_row(segments, toks, ds.L, ds.m, ds.S).image_chunks]
    font = ImageFont.load_default()
    scale, text_w = 2, 420
    h, w = sample["images"].shape[1:]
    panel = Image.new("RGB", (w * scale + text_w, max(1, len(texts)) * (h * scale + 6)), "white")
    draw = ImageDraw.Draw(panel)
    for i, (img, text) in enumerate(zip(sample["images"], texts)):
        y = i * (h * scale + 6)
        panel.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST).convert("RGB"), (0, y))
        draw.text((w * scale + 8, y), "\n".join(textwrap.wrap(repr(text), 60)[:10]), fill="black", font=font)
    mask = mask_picture(sample, ds.context)
    side = max(panel.height, 256)
    mask = mask.resize((side, side), Image.NEAREST)
    out = Image.new("RGB", (panel.width + side + 10, side), "white")
    out.paste(panel, (0, 0))
    out.paste(mask, (panel.width + 10, 0))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--split", choices=["train", "valid"], default="train")
    ap.add_argument("--stats", action="store_true")
    ap.add_argument("--check-render", action="store_true", help="lay out every chunk; exit 2 if any overflows")
    ap.add_argument("--ocr-grid", action="store_true", help="print the OCR head's grid (model.ocr_head.lines / "
                    "columns) this geometry needs, and the one configured")
    ap.add_argument("--row", type=int, help="global sample index of the row to draw")
    ap.add_argument("--out", default="row.png")
    ap.add_argument("--verify", action="store_true", help="full checksums of every dataset file; exit 2 if any differs")
    ap.add_argument("--prefix", help="inspect this dataset (or blend spec) instead of the config's")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.row is not None and args.row < 0:
        ap.error(f"--row must be >= 0 (a global sample index), got {args.row}")
    cfg = validate(load_config(args.preset, args.overrides))
    if args.ocr_grid:
        from megatron_vist2.data.ocr_targets import required_grid
        lines, columns = required_grid(cfg.model)
        o = cfg.model.ocr_head
        print(f"ocr-grid: a {cfg.model.chunk.image_height} x {cfg.model.chunk.image_width} image down to "
              f"{cfg.model.render.min_font_size} pt needs model.ocr_head.lines={lines} model.ocr_head.columns={columns} "
              f"({lines * columns} cells); configured {o.lines} x {o.columns}")
        if not (args.stats or args.check_render or args.row is not None or args.verify):
            return
    tok = load_tokenizer(cfg.data.tokenizer)
    spec = args.prefix or (cfg.data.train_prefix if args.split == "train" else cfg.data.valid_prefix)
    prefixes = [p for _, p in parse_blend(spec)]
    if args.verify:
        both = [cfg.data.train_prefix, cfg.data.valid_prefix] if not args.prefix else [spec]
        if verify(dict.fromkeys(p for b in both for _, p in parse_blend(b)), tok):
            raise SystemExit(2)
        if not (args.stats or args.check_render or args.row is not None):
            return
    datasets = [PackedVist2Dataset(open_indexed(p, tok), tok, cfg, cfg.train.seed) for p in prefixes]
    if args.stats or (args.row is None and not args.check_render):
        for p, ds in zip(prefixes, datasets):
            stats(ds, p)
            source_stats(ds)
    if args.check_render and sum(check_render(ds) for ds in datasets):
        raise SystemExit(2)
    if args.row is not None:
        ds = datasets[0]
        row_picture(ds, args.row).save(args.out)
        print(f"wrote {args.out}: row {args.row} of {prefixes[0]} (dataset row {ds.row_index(args.row)})")


if __name__ == "__main__":
    run_cli(main)
