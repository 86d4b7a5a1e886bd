"""The VIST2 layout, mask, positions and labels against a brute-force reading of the spec.

The reference below is written token by token from docs/spec.md and shares no code with the
package: it lists the tokens of a packed row (in either physical order), then decides every (query, key) pair with the
spec's sentences, using the token's index *inside its chunk* for causality (the package uses the
row index), and the spec's 1-based position formulas.
"""
import numpy as np
import pytest
import torch

from megatron_vist2.data.packing import Segment, assemble_row
from megatron_vist2.models.attention import PAD, TEXT, VISUAL, TokenLayout, dense_mask


def spec_tokens(docs, L, m, order="interleaved"):
    """docs: list of (num_text_tokens, readback flags). -> list of dicts, one per token, in the
    spec's physical order: 'interleaved' (T_1 V_1 T_2 ...) or 'blocked' (every visual token of the
    row, then every text token, each in interleaved order, then padding)."""
    out = []
    for slot, (length, flags) in enumerate(docs):
        n = -(-length // L)
        for i in range(1, n + 1):                       # chunks are 1-based in the spec
            text_len = min(L, length - (i - 1) * L)
            rb = flags[i - 1]
            visual = [dict(doc=slot, chunk=i, kind="V", j=t, rb=rb,
                           pos=(i - 1) * m + t) for t in range(m)]   # V_i at [(i-1)m, im)
            # T_i at [(i-1)m, (i-1)m+L), one later in read-back mode, after the marker (j = -1)
            text = [dict(doc=slot, chunk=i, kind="T", j=t, rb=rb, pos=(i - 1) * m + int(rb) + t)
                    for t in range(text_len)]
            marker = [dict(doc=slot, chunk=i, kind="T", j=-1, rb=True, pos=(i - 1) * m, marker=True)]
            if rb:                                       # read-back: V_i and its marker before T_i
                out += visual + marker + text
            else:
                out += text + (visual if i < n else [])  # V_N is never needed
    if order == "blocked":
        out = [t for t in out if t["kind"] == "V"] + [t for t in out if t["kind"] == "T"]
    return out


def spec_allowed(q, k):
    if q is None:
        return False
    if q["doc"] != k["doc"]:
        return False
    if q["kind"] == "T":
        if k["kind"] == "T":
            return k["chunk"] == q["chunk"] and k["j"] <= q["j"]
        return k["chunk"] < q["chunk"] or (q["rb"] and k["chunk"] == q["chunk"])
    return k["kind"] == "V" and k["chunk"] <= q["chunk"]


def random_docs(rng, L, max_chunks):
    docs = []
    for _ in range(rng.integers(1, 4)):
        length = int(rng.integers(1, max_chunks * L + 1))          # short last chunks included
        n = -(-length // L)
        docs.append((length, tuple(bool(x) for x in rng.random(n) < rng.choice([0.0, 0.5, 1.0]))))
    return docs


def build(docs, L, m, seq, order):
    segs = [Segment(i, 0, length, flags) for i, (length, flags) in enumerate(docs)]
    toks = [np.arange(1000 * (i + 1), 1000 * (i + 1) + length) for i, (length, _) in enumerate(docs)]
    return assemble_row(segs, toks, L, m, seq, order=order), toks


ORDERS = ["interleaved", "blocked"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("L, m", [(8, 2), (6, 3), (4, 4), (16, 4)])
def test_layout_mask_positions_equal_brute_force(L, m, order):
    rng = np.random.default_rng(L * 100 + m)
    for trial in range(25):
        docs = random_docs(rng, L, max_chunks=5)
        ref = spec_tokens(docs, L, m, order)
        seq = len(ref) + int(rng.integers(0, 5))                  # some padding
        row, _ = build(docs, L, m, seq, order)
        kinds = {"T": TEXT, "V": VISUAL}
        # layout and positions
        for s, tok in enumerate(ref):
            assert (row.doc[s], row.chunk[s] + 1, row.kind[s], row.readback[s], row.position[s]) == \
                (tok["doc"], tok["chunk"], kinds[tok["kind"]], tok["rb"], tok["pos"]), (trial, s)
        assert (row.kind[len(ref):] == PAD).all() and (row.doc[len(ref):] == -1).all()
        # the mask the attention uses
        layout = TokenLayout(*(torch.from_numpy(getattr(row, f))[None]
                               for f in ("doc", "chunk", "kind", "readback", "position")))
        got = dense_mask(layout)[0, 0].numpy()
        padded = ref + [None] * (seq - len(ref))
        for qi, q in enumerate(padded):
            for ki, k in enumerate(padded):
                want = (qi == ki) if q is None else (k is not None and spec_allowed(q, k))
                assert got[qi, ki] == want, (trial, qi, ki, q, k)


def spec_targets(ref):
    """(predictor row index, target token's ref index) pairs: text targets only."""
    where = {}
    for s, tok in enumerate(ref):
        where[(tok["doc"], tok["chunk"], tok["kind"], tok["j"])] = s
    pairs = []
    for s, tok in enumerate(ref):
        if tok["kind"] != "T":
            continue
        d, i, j = tok["doc"], tok["chunk"], tok["j"]
        if j < 0:                                         # a marker is never a target
            continue
        if j > 0 or tok["rb"]:                            # token j - 1, or the read-back marker
            pairs.append((where[(d, i, "T", j - 1)], s))
        elif i > 1:                                       # from the last token of V_{i-1}
            last = max(k[3] for k in where if k[:3] == (d, i - 1, "V"))
            pairs.append((where[(d, i - 1, "V", last)], s))
    return pairs


@pytest.mark.parametrize("order", ORDERS)
def test_labels_are_next_text_tokens_only(order):
    rng = np.random.default_rng(7)
    L, m = 8, 2
    for _ in range(40):
        docs = random_docs(rng, L, max_chunks=5)
        ref = spec_tokens(docs, L, m, order)
        row, toks = build(docs, L, m, len(ref) + 3, order)
        want_mask = np.zeros(len(row.labels), np.float32)
        want_labels = np.zeros(len(row.labels), np.int64)
        for pred, target in spec_targets(ref):
            t = ref[target]
            want_mask[pred] = 1.0
            want_labels[pred] = toks[t["doc"]][(t["chunk"] - 1) * L + t["j"]]
        np.testing.assert_array_equal(row.loss_mask, want_mask)
        np.testing.assert_array_equal(row.labels * (row.loss_mask > 0), want_labels)
        # text tokens in the row are exactly the documents' tokens, in order; markers hold id 0
        text = np.array([tok["kind"] == "T" and "marker" not in tok for tok in ref] + [False] * 3)
        marker = np.array(["marker" in tok for tok in ref] + [False] * 3)
        for slot, t in enumerate(toks):
            np.testing.assert_array_equal(row.tokens[(row.doc == slot) & text], t)
        assert (row.tokens[marker] == 0).all() and (row.kind[marker] == TEXT).all()
