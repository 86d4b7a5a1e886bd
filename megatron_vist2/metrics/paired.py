"""Loss differences on identical targets, with paired standard errors, and the history retention
R built from them.

Every model (VIST2 and the two controls) is scored on the same held-out rows; ``TargetRecorder``
keeps each target's loss where the row's *text position* of the target says (the target's
offset in its segment's text plus the text tokens of the segments before it in the row): the
same place in every context, whatever the visual tokens or the physical order. Two models'
differences d = loss_a - loss_b are then taken target by target, and

    gap = mean(d),   SE = sd(d) / sqrt(n)      (float64; sd with n - 1)

which is several times smaller than the unpaired SE when the two models' losses on a target are
correlated (they are: hard tokens are hard for both). Targets of one row are not independent
either (a document where history helps helps most of its targets), so each difference also gets
a row-clustered SE (the rows' summed differences around the mean, the usual sandwich estimator);
a gap is **measurable** when it is at least two of the larger of the two SEs.

Differences are taken on targets with history only (chunk index >= 1): chunk 0's targets have
none, so the controls predict them from the same text and differ there by training noise alone.
R = (L_window - L_model) / (L_window - L_text) on those targets, reported only where the
controls' gap is measurable (None otherwise, with the reason).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import UserError
from ..models.attention import TEXT

FIELDS = ("loss", "label", "target", "first")     # rows of a TargetRecorder buffer
STATS = ("n", "sum", "sumsq", "rows", "row_sumsq", "row_cross", "row_nsq")


class TargetRecorder:
    """Per-target losses of ``num_micro`` micro-batches of ``micro`` rows of ``seq_length``:
    a float64 [FIELDS, num_micro, micro, seq_length] buffer indexed by (micro-batch, row, text
    position); label -1 where a position holds no target. Called by the loss function once per
    micro-batch, in order (``targets.target_loss_fn``)."""

    def __init__(self, num_micro: int, micro: int, seq_length: int, device):
        self.buffer = torch.zeros(len(FIELDS), num_micro, micro, seq_length, dtype=torch.float64, device=device)
        self.buffer[1] = -1
        self.calls = 0

    def __call__(self, per_token: torch.Tensor, batch) -> None:
        """``per_token``: the losses [batch, seq] of ``batch`` (0 off the loss mask)."""
        kind, doc = batch.layout.kind, batch.layout.doc
        is_text = (kind == TEXT).long()
        B, S = kind.shape
        counts = torch.zeros(B, S + 1, dtype=torch.long, device=kind.device)
        counts.scatter_add_(1, (doc + 1).clamp(min=0), is_text)          # column 0: padding
        seg_start = torch.cumsum(counts[:, 1:], 1) - counts[:, 1:]       # text tokens before slot s
        keep = (batch.loss_mask > 0) & (batch.target >= 0)
        b, p = keep.nonzero(as_tuple=True)
        slot = seg_start[b, doc[b, p].clamp(min=0)] + batch.target[b, p]
        k = self.calls
        self.calls += 1
        for row, values in enumerate((per_token[b, p], batch.labels[b, p], batch.target[b, p],
                                      batch.first_target[b, p])):
            self.buffer[row, k][b, slot] = values.double()

    def arrays(self) -> Dict[str, np.ndarray]:
        """-> FIELDS -> [rows, seq_length] numpy arrays (this rank's rows, in sampler order)."""
        flat = self.buffer.detach().cpu().numpy().reshape(len(FIELDS), -1, self.buffer.shape[-1])
        out = dict(zip(FIELDS, flat))
        out["label"] = out["label"].astype(np.int64)
        out["target"] = out["target"].astype(np.int64)
        out["first"] = out["first"] > 0
        return out


def check_same_targets(per_target: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Every model must have been scored on the same targets (the same token at the same place of
    the same rows): otherwise their differences compare unlike things."""
    names = list(per_target)
    ref = per_target[names[0]]["label"]
    for name in names[1:]:
        other = per_target[name]["label"]
        if other.shape != ref.shape or not np.array_equal(other, ref):
            bad = int((other != ref).sum()) if other.shape == ref.shape else "all"
            raise UserError(f"the {name} checkpoint was scored on other targets than the {names[0]} "
                            f"checkpoint ({bad} of {int((ref >= 0).sum())} differ): its rows differ; "
                            f"check data.seq_length and model.chunk of both")


def categories(per_target: Dict[str, np.ndarray], L: int, bins: int) -> Dict[str, np.ndarray]:
    """Boolean [rows, seq] selections of the targets with history (chunk index >= 1): overall,
    within-chunk, chunk-first, and by chunk index (``within_<i>``, ``first_<i>``; indices past
    the last bin join the last)."""
    has = per_target["label"] >= 0
    chunk = np.minimum(np.maximum(per_target["target"], 0) // L, bins - 1)
    history = has & (chunk >= 1)
    first = per_target["first"]
    out = {"overall": history, "within_chunk": history & ~first, "chunk_first": history & first}
    for i in range(1, bins):
        out[f"within_{i}"] = history & ~first & (chunk == i)
        out[f"first_{i}"] = history & first & (chunk == i)
    return out


def difference_sums(a: np.ndarray, b: np.ndarray, selections: Dict[str, np.ndarray]) -> np.ndarray:
    """float64 [len(selections), len(STATS)]: the sufficient statistics of d = a - b on each
    selection (target count, sum, sum of squares; rows holding a selected target, and the sums
    the row-clustered SE needs), additive over disjoint sets of rows (data-parallel ranks)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    out = np.zeros((len(selections), len(STATS)))
    for i, sel in enumerate(selections.values()):
        dr, nr = np.where(sel, d, 0.0).sum(1), sel.sum(1).astype(np.float64)
        out[i] = [nr.sum(), dr.sum(), (d[sel] ** 2).sum(), (nr > 0).sum(), (dr * dr).sum(), (dr * nr).sum(),
                  (nr * nr).sum()]
    return out


def difference(stats: np.ndarray) -> Dict:
    """One row of ``difference_sums`` (summed over ranks) -> mean difference, its paired SE
    sd(d)/sqrt(n) and its row-clustered SE (None where they cannot be computed)."""
    n, s, sq, rows, rsq, rcross, rnsq = (float(x) for x in stats)
    mean = s / n if n else None
    se = math.sqrt(max(sq - n * mean * mean, 0.0) / (n - 1) / n) if n >= 2 else None
    se_rows = None
    if rows >= 2 and n:
        spread = max(rsq - 2 * mean * rcross + mean * mean * rnsq, 0.0)
        se_rows = math.sqrt(rows / (rows - 1) * spread) / n
    return {"gap": mean, "gap_se": se, "gap_se_rows": se_rows, "targets": int(n), "rows": int(rows)}


def controls_difference(stats: np.ndarray) -> Dict:
    """``difference`` of the controls (L_window - L_text), with ``measurable``: the gap is at
    least two of its larger SE (else ``reason`` says why R is not reported)."""
    out = difference(stats)
    mean, se = out["gap"], out["gap_se"]
    if se is None:
        return {**out, "measurable": False,
                "reason": f"{out['targets']} target(s) with history: a standard error needs 2 or more"}
    worst = max(se, out["gap_se_rows"] or 0.0)
    out["measurable"] = bool(mean > 0 and mean >= 2 * worst)
    if not out["measurable"]:
        out["reason"] = (f"the gap {mean:.4f} is under two standard errors ({worst:.4f}, "
                         f"{'row-clustered' if worst > se else 'paired'}): history is worth too little to "
                         f"the text control on these targets to measure what a model keeps of it")
    return out


def reduce_sums(sums: np.ndarray, group=None) -> np.ndarray:
    """Sum ``difference_sums`` over the ranks of ``group`` (data-parallel ranks: disjoint rows)."""
    if group is None or not torch.distributed.is_initialized():
        return sums
    t = torch.from_numpy(np.ascontiguousarray(sums))
    torch.distributed.all_reduce(t, group=group)
    return t.numpy()


def retention(per_target: Dict[str, Dict[str, np.ndarray]], L: int, bins: int, group=None) -> Dict:
    """R overall, on within-chunk and on chunk-first targets and by chunk index (targets with
    history), from the per-target losses of ``model``, ``text`` and ``window`` on the same rows;
    with the controls' gap L_window - L_text and the model's L_window - L_model behind each, and
    R's standard errors (``se``: paired and row-clustered, by linearisation)."""
    sel = categories(per_target["window"], L, bins)
    w, t, m = (per_target[r]["loss"] for r in ("window", "text", "model"))
    names = list(sel)
    controls = reduce_sums(difference_sums(w, t, sel), group)
    model = reduce_sums(difference_sums(w, m, sel), group)
    gaps = {k: controls_difference(controls[i]) for i, k in enumerate(names)}
    kept = {k: difference(model[i]) for i, k in enumerate(names)}
    # R = mean(w - m) / mean(w - t) over the same targets, where the denominator is measurable; its
    # SEs by linearisation: the SEs of mean(z), z = (w - m) - R (w - t), divided by mean(w - t)
    ratios = {k: kept[k]["gap"] / gaps[k]["gap"] for k in names if gaps[k]["measurable"]}
    z = {k: reduce_sums(difference_sums(w - m, r * (w - t), {k: sel[k]}), group)[0] for k, r in ratios.items()}

    def ratio(k) -> Optional[float]:
        return ratios.get(k)

    def ratio_se(k) -> Optional[Dict]:
        if k not in ratios:
            return None
        lin = difference(z[k])
        return {"paired": lin["gap_se"] / gaps[k]["gap"],
                "rows": lin["gap_se_rows"] / gaps[k]["gap"] if lin["gap_se_rows"] is not None else None}
    by_chunk: List[Dict] = [{"chunk": i, "within": ratio(f"within_{i}"), "first": ratio(f"first_{i}"),
                             "controls_gap_within": gaps[f"within_{i}"], "controls_gap_first": gaps[f"first_{i}"]}
                            for i in range(1, bins)]
    main = ("overall", "within_chunk", "chunk_first")
    out = {"targets": "targets with history (chunk index >= 1), the same in the three models",
           **{k: ratio(k) for k in main}, "se": {k: ratio_se(k) for k in main}, "by_chunk": by_chunk,
           "controls_gap": {k: gaps[k] for k in main}, "model_gap": {k: kept[k] for k in main}}
    if not gaps["overall"]["targets"]:
        raise UserError("no held-out target has history (every segment is a single chunk): R cannot be "
                        "measured; evaluate on documents longer than model.chunk.text_tokens")
    return out
