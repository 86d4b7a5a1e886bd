"""Collect the fidelity study's eval.json files (examples/tiny_cpu/fidelity.sh) into
docs/fidelity.md: one table and three plots (retention vs rho, OCR character accuracy vs rho
and font size, retrieval accuracy vs depth). Written to temporary names, renamed when complete."""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SMOKE_STEPS = 100       # below this many steps the numbers say nothing about the method


def load(runs: Path):
    out = {}
    for d in sorted(runs.iterdir()):
        f = d / "eval" / "eval.json"
        if f.is_file():
            r = json.loads(f.read_text())
            secs = d / "train_seconds"
            r["train_seconds"] = int(secs.read_text()) if secs.is_file() else None
            out[d.name] = r
    if not out:
        raise SystemExit(f"error: no {runs}/*/eval/eval.json: run examples/tiny_cpu/fidelity.sh first")
    return out


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def save(fig, path: Path):
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plots(results, fig_dir: Path, prefix: str):
    fig_dir.mkdir(parents=True, exist_ok=True)
    rho_runs = sorted(((r["rho"], n, r) for n, r in results.items() if "curriculum" not in n))
    names = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("overall", "all targets"), ("within_chunk", "within-chunk"), ("chunk_first", "chunk-first")):
        pts = [(rho, r["retention"][key]) for rho, _, r in rho_runs if r.get("retention") and r["retention"][key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2), ax.set_xlabel("rho"), ax.set_ylabel("retention R"), ax.legend(fontsize=7)
    save(fig, fig_dir / f"{prefix}_retention_vs_rho.png"), names.append(f"{prefix}_retention_vs_rho.png")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    pts = [(rho, r["ocr_readback"]["char_accuracy"]) for rho, _, r in rho_runs if r.get("ocr_readback")]
    if pts:
        a1.plot(*zip(*pts), marker="o")
    a1.set_xscale("log", base=2), a1.set_xlabel("rho"), a1.set_ylabel("OCR character accuracy"), a1.set_ylim(0, 1)
    for name, r in results.items():
        by = (r.get("ocr_readback") or {}).get("by_font_size") or {}
        sizes = sorted(by, key=int)
        if sizes:
            a2.plot([int(s) for s in sizes], [by[s]["char_accuracy"] for s in sizes], marker="o", label=name)
    a2.set_xlabel("font size chosen by the renderer (pt)"), a2.set_ylim(0, 1), a2.legend(fontsize=6)
    save(fig, fig_dir / f"{prefix}_ocr.png"), names.append(f"{prefix}_ocr.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        cells = (r.get("retrieval") or {}).get("cells") or []
        depths = sorted({c["depth"] for c in cells})
        if depths:
            acc = [sum(c["accuracy"] for c in cells if c["depth"] == d) / sum(1 for c in cells if c["depth"] == d)
                   for d in depths]
            ax.plot(depths, acc, marker="o", label=name)
    ax.set_xlabel("depth (tokens between key and question)"), ax.set_ylabel("exact match (mean over contexts)")
    ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=6)
    save(fig, fig_dir / f"{prefix}_retrieval.png"), names.append(f"{prefix}_retrieval.png")
    return names


def page(results, args, figures) -> str:
    smoke = args.steps < SMOKE_STEPS
    first = next(iter(results.values()))
    h = first["heldout"]
    lines = ["# Fidelity study: what the compressed context keeps", ""]
    if smoke:
        lines += [f"> **SMOKE RUN ({args.steps} training steps): these numbers only show that the pipeline runs "
                  f"end to end; they say nothing about VIST2.** Run the full study (below) for results.", ""]
    lines += [f"Produced by `{args.command.strip()}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.node()} ({os.cpu_count()} CPUs visible), preset {args.preset}, {args.steps} steps per "
              f"run, whole study {args.seconds} s.", "",
              "Every run trains on the same tokens for the same steps; held-out losses are on identical "
              "targets (the rows of the evaluated model, without read-back chunks). R = (L_window - L_model) / "
              "(L_window - L_text). Chunk-first targets (the first token of chunk i > 0: from the images in "
              "VIST2, from chunk i-1's text in the controls) are reported apart from within-chunk targets.", "",
              f"Controls: text loss {fmt(h.get('text', {}).get('loss'))}, window loss "
              f"{fmt(h.get('window', {}).get('loss'))} (on the rho = {first['rho']:g} rows).", "",
              "| run | rho | loss | chunk-first loss | R | R within | R chunk-first | OCR char acc | exact chunks | "
              "retrieval | loss past row | train s |", "|" + "---|" * 12]
    for name, r in sorted(results.items(), key=lambda kv: (kv[1]["rho"], kv[0])):
        m, ret = r["heldout"]["model"], r.get("retention") or {}
        ocr, long = r.get("ocr_readback") or {}, r.get("beyond_training_length") or {}
        lines.append(f"| {name} | {r['rho']:g} | {fmt(m['loss'])} | {fmt(m['chunk_first']['loss'])} | "
                     f"{fmt(ret.get('overall'))} | {fmt(ret.get('within_chunk'))} | {fmt(ret.get('chunk_first'))} | "
                     f"{fmt(ocr.get('char_accuracy'), '.1%')} | {fmt(ocr.get('exact_match'), '.1%')} | "
                     f"{fmt((r.get('retrieval') or {}).get('accuracy'), '.1%')} | "
                     f"{fmt(long.get('loss_beyond_training_length'))} | {r.get('train_seconds') or '-'} |")
    lines += ["", "Stretch goals (issue 17): R >= 0.8 at rho = 4; OCR character accuracy >= 95 % at rho <= 4.", ""]
    lines += [f"![{f}](figures/{f})" for f in figures]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--doc", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--command", default="bash examples/tiny_cpu/fidelity.sh")
    args = ap.parse_args()
    results = load(Path(args.runs))
    doc = Path(args.doc)
    figures = plots(results, doc.parent / "figures", "fidelity")
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(page(results, args, figures))
    os.replace(tmp, doc)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
