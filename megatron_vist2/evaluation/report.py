"""Writing an evaluation: eval.json (atomically), PNG plots (matplotlib, Agg), TensorBoard
scalars, and the short table printed at the end. Everything goes to a temporary directory
that is renamed into place when complete, so a failed run leaves nothing half-written, and an
existing output directory is never overwritten."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import UserError


def check_output_dir(out: str) -> None:
    path = Path(out)
    if path.exists():
        raise UserError(f"--out {path} already exists: choose a new directory (an evaluation never "
                        f"overwrites earlier results)")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"--out {path}: its parent directory {parent} does not exist or is not writable")


def scalars(results: Dict) -> Dict[str, float]:
    """The flat numbers TensorBoard gets (tags eval/...)."""
    out: Dict[str, float] = {}
    for role, r in results.get("heldout", {}).items():
        for key, value in (("loss", r["loss"]), ("chunk_first_loss", r["chunk_first"]["loss"]),
                           ("within_chunk_loss", r["within_chunk"]["loss"])):
            if value is not None:
                out[f"eval/{role}/{key}"] = value
    ret = results.get("retention") or {}
    for key in ("overall", "within_chunk", "chunk_first"):
        if ret.get(key) is not None:
            out[f"eval/retention/{key}"] = ret[key]
        gap = (ret.get("controls_gap") or {}).get(key) or {}
        for name, field in (("controls_gap", "gap"), ("controls_gap_se", "gap_se"),
                            ("controls_gap_se_rows", "gap_se_rows")):
            if gap.get(field) is not None:
                out[f"eval/{name}/{key}"] = gap[field]
    ocr = results.get("ocr_readback") or {}
    if ocr.get("chunks"):
        out["eval/ocr/cer"], out["eval/ocr/exact_match"] = ocr["cer"], ocr["exact_match"]
        if ocr.get("blind"):
            out["eval/ocr/blind_cer"] = ocr["blind"]["cer"]
    if "retrieval" in results:
        out["eval/retrieval/accuracy"] = results["retrieval"]["accuracy"]
        for role, acc in (results["retrieval"].get("by_model") or {}).items():
            out[f"eval/retrieval/{role}/accuracy"] = acc
    long = results.get("beyond_training_length") or {}
    if long.get("loss_beyond_training_length") is not None:
        out["eval/long/loss_beyond_training_length"] = long["loss_beyond_training_length"]
    return out


def table(results: Dict) -> str:
    """A short plain-text summary."""
    lines = [f"{results['checkpoint']} (step {results['step']}, context {results['context']}, "
             f"rho {results['rho']:g})", f"{'':18}{'loss':>8}{'ppl':>9}{'chunk-first':>13}{'within':>9}{'targets':>9}"]

    def f(x, spec=".4f"):
        return format(x, spec) if x is not None else "-"
    for role, r in results["heldout"].items():
        lines.append(f"{role:18}{f(r['loss']):>8}{f(r['perplexity'], '.2f'):>9}"
                     f"{f(r['chunk_first']['loss']):>13}{f(r['within_chunk']['loss']):>9}{r['targets']:>9}")
    ret = results.get("retention")
    if ret:
        gaps = ret.get("controls_gap") or {}
        def r_text(key):
            if ret[key] is None:
                return "not measurable"
            se = (ret.get("se") or {}).get(key) or {}
            worst = max(se.get("paired") or 0.0, se.get("rows") or 0.0)
            return f"{ret[key]:.3f}" + (f" +- {worst:.3f}" if worst else "")
        lines.append("retention R       " + ", ".join(f"{key.replace('_', '-')} {r_text(key)}"
                                                      for key in ("overall", "within_chunk", "chunk_first"))
                     + " (targets with history: chunk index >= 1; +- the larger SE)")
        for key, g in gaps.items():
            if g["gap"] is None:
                continue
            worst = max(g["gap_se"] or 0.0, g["gap_se_rows"] or 0.0)
            lines.append(f"  controls' gap   {key.replace('_', '-'):13}{g['gap']:.4f} +- {f(g['gap_se'])} paired, "
                         f"+- {f(g['gap_se_rows'])} by row" + (f" = {g['gap'] / worst:.1f} SE" if worst else "")
                         + f" on {g['targets']:,} targets" + ("" if g["measurable"] else " (R not measurable)"))
        lines.append("  (L_window - L_text in nats; R is reported where it is >= 2 of the larger standard error)")
    ocr = results.get("ocr_readback")
    if ocr and ocr.get("chunks"):
        lines.append(f"OCR read-back     CER {ocr['cer']:.3f} (char accuracy {ocr['char_accuracy']:.1%}), "
                     f"exact chunks {ocr['exact_match']:.1%} of {ocr['chunks']}")
        if ocr.get("blind"):
            lines.append(f"  blind           char accuracy {ocr['blind']['char_accuracy']:.1%} reading each chunk "
                         f"from another chunk's image (the language prior alone)")
    if "retrieval" in results:
        lines += retrieval_lines(results["retrieval"])
    long = results.get("beyond_training_length")
    if long and long.get("documents"):
        lines.append(f"beyond training   loss {f(long['loss_beyond_training_length'])} past "
                     f"{long['training_row_text_tokens']} tokens (within {f(long['loss_within_training_length'])})")
    return "\n".join(lines)


def retrieval_lines(ret: Dict) -> List[str]:
    """Exact match of every model at every depth, one block per context length."""
    roles = list(ret.get("by_model") or {"model": ret["accuracy"]})
    lines = [f"retrieval         exact match, {ret['accuracy']:.1%} overall for the model; by depth (tokens "
             f"between the key and the question):"]
    for context in sorted({c["context"] for c in ret["cells"]}):
        cells = [c for c in ret["cells"] if c["context"] == context]
        lines.append(f"  context {context:<6} depth" + "".join(f"{c['depth']:>7}" for c in cells)
                     + f"   ({cells[0]['trials']} trials each)")
        for role in roles:
            accs = [(c.get("by_model") or {"model": c["accuracy"]})[role] for c in cells]
            lines.append(f"    {role:18}" + "".join(f"{a:>7.0%}" for a in accs))
    return lines


def _series(rows: List[Dict], key: str) -> Tuple[List[int], List[float]]:
    pts = [(r["chunk"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plots(results: Dict, out: Path) -> List[str]:
    """Loss by chunk index (each model), retention by chunk index, OCR CER by font size,
    retrieval accuracy by depth -> the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for role, r in results["heldout"].items():
        ax.plot(*_series(r["by_chunk"], "loss_within"), marker="o", label=f"{role} within-chunk")
        ax.plot(*_series(r["by_chunk"], "loss_first"), marker="x", ls="--", label=f"{role} chunk-first")
    ax.set_xlabel("chunk index i (chunks of history before it)"), ax.set_ylabel("held-out loss")
    ax.legend(fontsize=7)
    save(fig, "loss_by_chunk.png")
    if results.get("retention"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(*_series(results["retention"]["by_chunk"], "within"), marker="o", label="within-chunk")
        ax.plot(*_series(results["retention"]["by_chunk"], "first"), marker="x", label="chunk-first")
        ax.set_xlabel("chunk index i"), ax.set_ylabel("retention R"), ax.legend(fontsize=7)
        save(fig, "retention_by_chunk.png")
    ocr = results.get("ocr_readback")
    if ocr and ocr.get("chunks"):
        sizes = sorted(ocr["by_font_size"], key=int)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(sizes, [ocr["by_font_size"][s]["char_accuracy"] for s in sizes])
        ax.set_xlabel("font size chosen by the renderer (pt)"), ax.set_ylabel("OCR character accuracy")
        ax.set_ylim(0, 1)
        save(fig, "ocr_by_font_size.png")
    if results.get("retrieval"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ret = results["retrieval"]
        for context in sorted({c["context"] for c in ret["cells"]}):
            cells = [c for c in ret["cells"] if c["context"] == context]
            for role in (ret.get("by_model") or {"model": None}):
                ax.plot([c["depth"] for c in cells], [(c.get("by_model") or {"model": c["accuracy"]})[role]
                                                      for c in cells],
                        marker="o", ls="-" if role == "model" else "--", label=f"{role}, context {context}")
        ax.set_xlabel("depth (tokens between the key and the question)"), ax.set_ylabel("exact match")
        ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=7)
        save(fig, "retrieval_by_depth.png")
    return written


def _clean(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write(results: Dict, out: str, tensorboard: bool = True) -> Path:
    """Write everything under a temporary sibling of ``out``, then rename it to ``out``."""
    final = Path(out)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        results = _clean(results)
        results["plots"] = plots(results, tmp)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(log_dir=str(tmp / "tensorboard"))
            for key, value in scalars(results).items():
                writer.add_scalar(key, value, results["step"])
            writer.close()
        (tmp / "eval.json").write_text(json.dumps(results, indent=1))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
