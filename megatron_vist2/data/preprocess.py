"""Corpus -> tokenized indexed datasets, split by document, in parallel worker processes.

Documents are tokenized by a pool of workers (each loads the tokenizer once) in input order, so
the output is identical for any number of workers. Instruction data (prompt/response pairs) is
stored as prompt + response tokens with a response mask (1 on response tokens).
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from .indexed import write_indexed
from .tokenizer import load_tokenizer

SPLITS = ("train", "valid", "test")
_worker_tokenizer = None


def _init_worker(path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(path)


def _encode(item: Tuple) -> Tuple[str, np.ndarray, Optional[np.ndarray], int]:
    """(name, text) or (name, prompt, response) -> (name, ids, mask, utf-8 bytes). Arrays, not
    lists: they cross the process boundary ~10x cheaper."""
    tok = _worker_tokenizer
    if len(item) == 2:
        name, text = item
        return name, np.asarray(tok.encode(text), np.int32), None, len(text.encode("utf-8"))
    name, prompt, response = item
    p, r = tok.encode(prompt), tok.encode(response)
    mask = np.r_[np.zeros(len(p), np.uint8), np.ones(len(r), np.uint8)]
    return name, np.asarray(p + r, np.int32), mask, len((prompt + response).encode("utf-8"))


def parse_split(spec: str) -> Tuple[float, float, float]:
    """'95,5,0' -> normalised weights of train / valid / test."""
    try:
        w = [float(x) for x in spec.split(",")]
    except ValueError:
        w = []
    if len(w) != 3 or any(x < 0 for x in w) or w[0] <= 0:
        raise ConfigError(f"--split '{spec}': expected three non-negative weights train,valid,test "
                          f"with train > 0, e.g. 95,5,0")
    total = sum(w)
    return tuple(x / total for x in w)


def assign_splits(num_docs: int, weights: Sequence[float], seed: int) -> np.ndarray:
    """Split index per document: a seeded permutation cut by the weights; a split with a
    non-zero weight gets at least one document."""
    counts = [int(round(num_docs * w)) if w > 0 else 0 for w in weights[1:]]
    counts = [max(1, c) if w > 0 else 0 for c, w in zip(counts, weights[1:])]
    if sum(counts) >= num_docs:
        raise ConfigError(f"{num_docs} documents are too few for the split {list(weights)}: "
                          f"train would be empty")
    order = np.random.default_rng(seed).permutation(num_docs)
    split = np.zeros(num_docs, np.int64)
    split[order[:counts[0]]] = 1
    split[order[counts[0]:counts[0] + counts[1]]] = 2
    return split


def preprocess(items: Sequence[Tuple], tokenizer_path: str, output_prefix: str, split: str = "95,5,0",
               workers: int = 1, seed: int = 1234, progress: bool = True) -> Dict[str, dict]:
    """Tokenize ``items`` and write ``<prefix>_<split>`` datasets; return their manifests."""
    tok = load_tokenizer(tokenizer_path)
    weights = parse_split(split)
    which = assign_splits(len(items), weights, seed)
    instruction = len(items[0]) == 3
    t0, done_bytes = time.time(), 0
    encoded: List[Tuple] = []
    pool = mp.get_context("fork").Pool(workers, _init_worker, (tokenizer_path,)) if workers > 1 else None
    try:
        if pool is None:
            _init_worker(tokenizer_path)
            results = map(_encode, items)
        else:
            results = pool.imap(_encode, items, chunksize=max(1, len(items) // (workers * 16)))
        for k, res in enumerate(results, 1):
            encoded.append(res)
            done_bytes += res[3]
            if progress and (k % 25 == 0 or k == len(items)):
                rate = done_bytes / 1e6 / max(time.time() - t0, 1e-9)
                print(f"\r  tokenized {k}/{len(items)} documents, {done_bytes / 1e6:.1f} MB "
                      f"({rate:.1f} MB/s, {workers} worker{'s' if workers > 1 else ''})",
                      end="\n" if k == len(items) else "", file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    manifests = {}
    for s, name in enumerate(SPLITS):
        docs = [(n, ids, mask) for (n, ids, mask, _), w in zip(encoded, which) if w == s]
        if docs:
            manifests[name] = write_indexed(f"{output_prefix}_{name}", docs, tok, with_mask=instruction)
    manifests["_stats"] = {"bytes": done_bytes, "seconds": time.time() - t0}
    return manifests
