"""A recall-rich source: documents whose later chunks restate, word for word, the passages stated
in their first chunks, so that history is worth a lot to a model that keeps it (docs/evaluation.md,
"A setting in which history matters").

Made deterministically from an indexed corpus (the bundled one: ``tools/make_recall_data.py``),
at the token level so that a restatement is exactly the same ids. Each document is one window of
``chunks`` x ``L`` consecutive corpus tokens (one segment: a training row's whole history):

    chunks 0 .. F-1   the facts: the window's first F chunks, as written (F = ceil(chunks / 3))
    chunk c >= F      a copy of chunk c - F: the facts come back in order, every F chunks

A model that sees only the current chunk (the window control) cannot predict a restated chunk
beyond the language prior; a model that keeps the history (the text control, or VIST2 reading
the image of chunk c - F) can copy it. The copies sit at one fixed distance (F chunks), the
simplest recall to learn: one attention head at that offset. Two harder variants were not learnt
at tiny-cpu scale in 360 steps (docs/evaluation.md): passages of random length copied from random
places (that needs an induction circuit), and whole chunks copied from a facts chunk chosen at
random (within-chunk loss 4.51-4.56 on the copies against 4.55-4.70 on the facts). Windows do
not overlap, so no two documents share text.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np


def recall_document(window: np.ndarray, L: int, facts: int) -> Tuple[np.ndarray, np.ndarray]:
    """One document from ``window`` (``chunks`` x ``L`` tokens) -> (ids, copied), ``copied``
    marking the tokens that restate a facts chunk."""
    n = len(window) // L
    if len(window) != n * L or not 0 < facts < n:
        raise ValueError(f"a window of {len(window)} tokens with {facts} facts chunk(s) of {L}: expected "
                         f"a whole number of chunks, more than the facts")
    ids = np.asarray(window).copy()
    for c in range(facts, n):
        ids[c * L:(c + 1) * L] = ids[(c - facts) * L:(c - facts + 1) * L]
    copied = np.arange(len(ids)) >= facts * L
    return ids, copied


def recall_documents(indexed, chunks: int, L: int, facts: int, stats: Dict = None) -> Iterator[Tuple]:
    """(name, ids, None) for every non-overlapping window of ``chunks`` x ``L`` tokens of every
    document of ``indexed`` (a remainder shorter than a window is not used); ``stats`` (a dict,
    optional) receives the counts: documents, tokens, copied tokens."""
    doc_tokens = chunks * L
    if stats is not None:
        stats.update(documents=0, tokens=0, copied_tokens=0)
    for d in range(len(indexed)):
        length = int(indexed.lengths[d])
        for w in range(length // doc_tokens):
            ids, copied = recall_document(indexed.tokens(d, w * doc_tokens, doc_tokens), L, facts)
            if stats is not None:
                stats["documents"] += 1
                stats["tokens"] += len(ids)
                stats["copied_tokens"] += int(copied.sum())
            yield f"recall-{d}-{w}", ids.astype(np.int64).tolist(), None
