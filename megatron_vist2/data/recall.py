"""A recall-rich source: documents whose later chunks restate, word for word, passages stated in
their first chunks, so that history is worth a lot to a model that keeps it (docs/evaluation.md,
"A setting in which history matters").

Made deterministically from an indexed corpus (the bundled one: ``tools/make_recall_data.py``),
at the token level so that a restatement is exactly the same ids. Each document is one window of
``chunks`` x ``L`` consecutive corpus tokens (one segment: a training row's whole history):

    chunks 0 .. F-1   the facts: the window's first F chunks, as written (F = ceil(chunks / 3))
    chunks F ..       each one a copy of one of the facts chunks, chosen at random

A model that sees only the current chunk (the window control) cannot predict a restated chunk
beyond the language prior; a model that keeps the history (the text control, or VIST2 reading
its images) can copy all but its first token or so (which of the F passages comes next is
random). Copies are whole chunks at whole-chunk distances, the simplest recall to learn: a small
model learns it within a few hundred steps, where copying passages of random length from random
places (induction) was not learnt in 360 steps at tiny-cpu scale (docs/evaluation.md). Windows
do not overlap, so no two documents share text.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np


def recall_document(window: np.ndarray, L: int, facts: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One document from ``window`` (``chunks`` x ``L`` tokens) -> (ids, copied), ``copied``
    marking the tokens that restate a facts chunk."""
    n = len(window) // L
    if len(window) != n * L or not 0 < facts < n:
        raise ValueError(f"a window of {len(window)} tokens with {facts} facts chunk(s) of {L}: expected "
                         f"a whole number of chunks, more than the facts")
    ids = np.asarray(window).copy()
    for c in range(facts, n):
        j = int(rng.integers(0, facts))
        ids[c * L:(c + 1) * L] = window[j * L:(j + 1) * L]
    copied = np.arange(len(ids)) >= facts * L
    return ids, copied


def recall_documents(indexed, chunks: int, L: int, facts: int, seed: int, stats: Dict = None) -> Iterator[Tuple]:
    """(name, ids, None) for every non-overlapping window of ``chunks`` x ``L`` tokens of every
    document of ``indexed`` (a remainder shorter than a window is not used); ``stats`` (a dict,
    optional) receives the counts: documents, tokens, copied tokens."""
    doc_tokens = chunks * L
    rng = np.random.default_rng([seed, 0x2EC411])
    if stats is not None:
        stats.update(documents=0, tokens=0, copied_tokens=0)
    for d in range(len(indexed)):
        length = int(indexed.lengths[d])
        for w in range(length // doc_tokens):
            ids, copied = recall_document(indexed.tokens(d, w * doc_tokens, doc_tokens), L, facts, rng)
            if stats is not None:
                stats["documents"] += 1
                stats["tokens"] += len(ids)
                stats["copied_tokens"] += int(copied.sum())
            yield f"recall-{d}-{w}", ids.astype(np.int64).tolist(), None
