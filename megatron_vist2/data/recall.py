"""A recall-rich source: documents whose later chunks repeat passages stated in their first
chunks, so that history is worth a lot to a model that keeps it (docs/evaluation.md, "A setting
in which history matters").

Made deterministically from an indexed corpus (the bundled one: ``tools/make_recall_data.py``),
at the token level so that a repeat is exactly the same ids. Each document is one window of
``doc_tokens`` consecutive corpus tokens (one segment: a training row's whole history), laid out
as

    [ facts: the window's first ``facts_tokens`` tokens, as written ]
    [ tail: a short natural snippet (the window's own continuation), then a passage copied from
      the facts, then a snippet, a passage, ... until the document has ``doc_tokens`` tokens ]

Passages are COPY_LENGTH tokens long (uniform) and start anywhere in the facts; snippets are
SNIPPET_LENGTH tokens. With ``facts_tokens`` a whole number of chunks, every copied passage lies
in a later chunk than its original: a model that sees only the current chunk (the window
control) cannot predict it beyond the language prior; a model that keeps the history (the text
control, or VIST2 reading its images) can copy all but the first token or two of each passage.
Windows do not overlap, so no two documents share text.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import numpy as np

COPY_LENGTH = (12, 40)      # tokens of a copied passage: uniform in [lo, hi]
SNIPPET_LENGTH = (4, 12)    # tokens of natural text between two passages


def recall_document(window: np.ndarray, facts_tokens: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One document from ``window`` (its length is the document's) -> (ids, copied), ``copied``
    marking the tokens that repeat an earlier passage."""
    n = len(window)
    if not 0 < facts_tokens < n or facts_tokens < COPY_LENGTH[1]:
        raise ValueError(f"facts_tokens {facts_tokens} must be in [{COPY_LENGTH[1]}, {n}) for a document of {n}")
    facts = np.asarray(window[:facts_tokens])
    rest = np.asarray(window[facts_tokens:])
    ids: List[np.ndarray] = [facts]
    copied: List[np.ndarray] = [np.zeros(facts_tokens, bool)]
    have, natural = facts_tokens, 0
    while have < n:
        k = int(rng.integers(SNIPPET_LENGTH[0], SNIPPET_LENGTH[1] + 1))
        snippet = rest[natural:natural + k]
        natural += len(snippet)
        length = int(rng.integers(COPY_LENGTH[0], COPY_LENGTH[1] + 1))
        start = int(rng.integers(0, facts_tokens - length + 1))
        for part, flag in ((snippet, False), (facts[start:start + length], True)):
            part = part[:n - have]
            ids.append(part), copied.append(np.full(len(part), flag))
            have += len(part)
    return np.concatenate(ids), np.concatenate(copied)


def recall_documents(indexed, doc_tokens: int, facts_tokens: int, seed: int, stats: Dict = None) -> Iterator[Tuple]:
    """(name, ids, None) for every non-overlapping ``doc_tokens`` window of every document of
    ``indexed`` (a remainder shorter than a window is not used); ``stats`` (a dict, optional)
    receives the counts: documents, tokens, copied tokens."""
    rng = np.random.default_rng([seed, 0x2EC411])
    if stats is not None:
        stats.update(documents=0, tokens=0, copied_tokens=0)
    for d in range(len(indexed)):
        length = int(indexed.lengths[d])
        for w in range(length // doc_tokens):
            ids, copied = recall_document(indexed.tokens(d, w * doc_tokens, doc_tokens), facts_tokens, rng)
            if stats is not None:
                stats["documents"] += 1
                stats["tokens"] += len(ids)
                stats["copied_tokens"] += int(copied.sum())
            yield f"recall-{d}-{w}", ids.astype(np.int64).tolist(), None
