"""Per-target held-out losses, tagged so that models with different contexts are compared on
identical targets, and the history retention R computed from them.

A target is tagged by the chunk it belongs to (0-based: how far into its segment, i.e. how much
history precedes it) and by whether it is the **first token of its chunk**. Chunk-first targets
are predicted from the images of the history in VIST2 (the last visual token of V_{i-1}), from
the last text token of chunk i-1 in the text control, and from chunk i-1's text alone in the
window control; every other target is predicted inside its chunk's text. The two kinds are
reported separately. Both tags come with the rows (data/packing.py: ``target``, the target's
offset in its segment's text, the same in every context; ``first_target``), not from the model.

R = (L_window - L_model) / (L_window - L_text): 0 when the model uses no history (it does as
well as a model that sees only the current chunk), 1 when it keeps all of it (as well as the
uncompressed text control). R is only as good as its denominator: each R comes with the controls'
gap L_window - L_text and that gap's standard error (from the per-target loss variances, as if the
two controls' targets were independent: an upper bound, their losses on the same targets are
positively correlated); ``measurable`` is False when the gap is under two standard errors, and R
then says nothing (a model whose history is worth nothing to the text control cannot lose it).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from ..config import Config
from ..data.packing import max_chunks_per_segment
from ..models.vist2 import Vist2Batch
from .loss import masked_token_losses

FIELDS = ("first_sum", "first_count", "within_sum", "within_count", "first_sumsq", "within_sumsq")


def new_stats(bins: int, device) -> torch.Tensor:
    """The zeroed statistics vector ``target_loss_fn`` adds to (len(FIELDS) x bins, flat), in
    float64: a variance from summed squares loses the digits float32 would keep."""
    return torch.zeros(len(FIELDS) * bins, device=device, dtype=torch.float64)


def chunk_bins(cfg: Config) -> int:
    """How many chunk indices a row of this config can hold (one bin each)."""
    m = cfg.model
    return max_chunks_per_segment(cfg.data.seq_length, m.chunk.text_tokens, m.visual_tokens_per_chunk,
                                  cfg.data.readback_fraction > 0)


def target_tags(batch: Vist2Batch, L: int):
    """-> (target chunk index, chunk-first flag), each [batch, seq], for every predictor position."""
    return batch.target.clamp(min=0) // L, batch.first_target.bool()


def target_loss_fn(bins: int, L: int):
    """A loss function for the pipeline schedule: -> (summed loss, statistics [FIELDS x bins]):
    loss sum, target count and sum of squared losses of chunk-first and of within-chunk targets,
    by target chunk index (indices past the last bin join the last)."""
    def loss_fn(logits: torch.Tensor, batch: Vist2Batch):
        per_token = masked_token_losses(logits, batch).t()          # [batch, seq]
        chunk, first = target_tags(batch, L)
        targets = batch.loss_mask > 0
        idx = chunk.clamp(max=bins - 1)
        stats = new_stats(bins, per_token.device).reshape(len(FIELDS), bins)
        for row, sel in enumerate((first, ~first)):
            keep = targets & sel
            loss = per_token[keep].double()
            stats[2 * row].index_add_(0, idx[keep], loss)
            stats[2 * row + 1].index_add_(0, idx[keep], torch.ones_like(loss))
            stats[4 + row].index_add_(0, idx[keep], loss * loss)
        return per_token.sum(), stats.flatten()
    return loss_fn


def _mean(total: float, count: float) -> Optional[float]:
    return total / count if count > 0 else None


def summarize(stats: torch.Tensor, bins: int) -> Dict:
    """Statistics of ``target_loss_fn`` (summed over ranks and batches) -> losses: all targets,
    chunk-first, within-chunk, and by chunk index (None where a kind has no target)."""
    s = stats.double().reshape(len(FIELDS), bins).cpu()
    fs, fc, ws, wc, fq, wq = (s[i] for i in range(len(FIELDS)))

    def part(total, count, squares):
        mean = _mean(total, count)
        var = max(squares / count - mean * mean, 0.0) if mean is not None else None
        return {"loss": mean, "targets": int(count), "loss_variance": var}
    whole = part(float(fs.sum() + ws.sum()), float(fc.sum() + wc.sum()), float(fq.sum() + wq.sum()))
    loss = whole["loss"]
    return {**whole, "perplexity": math.exp(loss) if loss is not None else None,
            "chunk_first": part(float(fs.sum()), float(fc.sum()), float(fq.sum())),
            "within_chunk": part(float(ws.sum()), float(wc.sum()), float(wq.sum())),
            "by_chunk": [{"chunk": i, "loss_within": _mean(float(ws[i]), float(wc[i])),
                          "targets_within": int(wc[i]), "loss_first": _mean(float(fs[i]), float(fc[i])),
                          "targets_first": int(fc[i])} for i in range(bins)]}


def retention_ratio(model: Optional[float], window: Optional[float], text: Optional[float]) -> Optional[float]:
    """R = (L_window - L_model) / (L_window - L_text); None when a loss is missing or the
    controls do not differ (no history to keep)."""
    if model is None or window is None or text is None or abs(window - text) < 1e-12:
        return None
    return (window - model) / (window - text)


def controls_gap(window: Dict, text: Dict) -> Dict:
    """L_window - L_text of two ``summarize`` parts, its standard error and whether it exceeds two."""
    if window["loss"] is None or text["loss"] is None or not window["targets"] or not text["targets"]:
        return {"gap": None, "gap_se": None, "measurable": False}
    gap = window["loss"] - text["loss"]
    se = math.sqrt(window["loss_variance"] / window["targets"] + text["loss_variance"] / text["targets"])
    return {"gap": gap, "gap_se": se, "measurable": bool(gap > 2 * se)}


def retention(model: Dict, window: Dict, text: Dict) -> Dict:
    """R overall, on within-chunk and on chunk-first targets, and by chunk index, from three
    ``summarize`` results on the same rows; with the controls' gap behind each of the three."""
    def by(key):
        return retention_ratio(model[key]["loss"], window[key]["loss"], text[key]["loss"])
    rows: List[Dict] = []
    for a, b, c in zip(model["by_chunk"], window["by_chunk"], text["by_chunk"]):
        rows.append({"chunk": a["chunk"],
                     "within": retention_ratio(a["loss_within"], b["loss_within"], c["loss_within"]),
                     "first": retention_ratio(a["loss_first"], b["loss_first"], c["loss_first"])})
    return {"overall": retention_ratio(model["loss"], window["loss"], text["loss"]),
            "within_chunk": by("within_chunk"), "chunk_first": by("chunk_first"), "by_chunk": rows,
            "controls_gap": {"overall": controls_gap(window, text),
                             "within_chunk": controls_gap(window["within_chunk"], text["within_chunk"]),
                             "chunk_first": controls_gap(window["chunk_first"], text["chunk_first"])}}


def check_same_targets(results: Dict[str, Dict]) -> None:
    """Every model must have been scored on the same within-chunk targets (the same rows): a
    difference in their counts means the rows differed, and R would compare unlike things.
    (Chunk-first targets may differ: a context without history may leave them unscored.)"""
    counts = {name: [r["targets_within"] for r in res["by_chunk"]] for name, res in results.items()}
    names = list(counts)
    for name in names[1:]:
        if counts[name] != counts[names[0]]:
            from ..errors import UserError
            raise UserError(f"the {name} checkpoint was scored on other targets than the {names[0]} "
                            f"checkpoint ({counts[name]} vs {counts[names[0]]} per chunk): its rows "
                            f"differ; check data.seq_length and model.chunk of both")
