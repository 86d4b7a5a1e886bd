"""Corpus -> tokenized indexed datasets, split by document: streaming, in worker processes,
resumable per input shard.

Two phases. (1) Each input unit (a file, or a folder of .txt) is read as a stream, tokenized in
batches by a pool of workers (each loads the tokenizer once; results are taken in input order,
so the output is identical for any number of workers) and written to its own part dataset
``<prefix>.parts/part-NNNNNN`` under a temporary name, renamed when complete. A re-run skips
every part whose manifest records the same input (path, size, mtime), tokenizer and fields, so
an interrupted run resumes without redoing finished shards. (2) Documents are assigned to
train/valid/test by a seeded permutation of their global index and copied from the parts into
``<prefix>_<split>`` in input order (token copies only); the parts are then removed. The outputs
depend only on the inputs, the tokenizer, the split and the seed: a resumed run writes the same
bytes as an uninterrupted one.

Memory is bounded independently of the corpus size: at most ``2 x workers`` batches of
``BATCH_BYTES`` of text (and their tokens) are in flight, readers hold one line or one record
batch, and the indexed writers keep ~40 bytes per document (megatron-core's builder keeps the
lengths list), plus 8 bytes per document for the split permutation in phase 2.

Instruction data (prompt/response pairs) is stored as prompt + response tokens with a response
mask (1 on response tokens).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, CorpusError, DatasetError, UserError
from .corpus import TEXT_FIELDS
from .indexed import open_indexed, write_indexed
from .progress import Progress
from .readers import Source, iter_source
from .tokenizer import load_tokenizer

SPLITS = ("train", "valid", "test")
BATCH_BYTES, BATCH_DOCS = 1 << 20, 1024      # one task for a worker: about 1 MB of text
FAULT_ENV = "MEGATRON_VIST2_FAIL_AFTER_PARTS"  # tests: stop after this many parts are written
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


def _encode_batch(batch: List[Tuple]) -> List[Tuple]:
    return [_encode(item) for item in batch]


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
    split = np.zeros(num_docs, np.int8)
    split[order[:counts[0]]] = 1
    split[order[counts[0]:counts[0] + counts[1]]] = 2
    return split


@dataclass
class Unit:
    """One resumable piece of input: ``key`` identifies its contents (None: never reused)."""
    label: str
    size: int
    items: Callable[[], Iterable[Tuple]]
    key: Optional[dict]


def source_units(sources: Sequence[Source], fields: Sequence[str] = TEXT_FIELDS) -> List[Unit]:
    def unit(src):
        key = {"source": str(src.path.resolve()), "format": src.fmt, "fields": list(fields),
               **src.fingerprint()}
        return Unit(src.label, key["bytes"],
                    lambda: ((name, *values) for name, values in iter_source(src, fields)), key)
    return [unit(s) for s in sources]


def _batches(items: Iterable[Tuple]) -> Iterator[List[Tuple]]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += sum(len(x) for x in item[1:])
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded(items: Iterable[Tuple], pool, workers: int) -> Iterator[Tuple]:
    """Tokenized items in input order; the reader runs here, at most 2 x workers batches ahead."""
    if pool is None:
        for batch in _batches(items):
            yield from _encode_batch(batch)
        return
    pending = deque()
    for batch in _batches(items):
        pending.append(pool.apply_async(_encode_batch, (batch,)))
        if len(pending) >= 2 * workers:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _part_done(prefix: str, key: dict, tok) -> Optional[dict]:
    """The manifest of a finished part for this input, or None when it must be (re)made."""
    if not Path(f"{prefix}.json").is_file():
        return None
    try:
        part = open_indexed(prefix, tok)
    except DatasetError:
        return None
    return part.manifest if part.manifest.get("input") == key else None


def _worker_context():
    """Workers are forked from a fork server (started once, with this module imported), never
    from the calling process: a fork copies only the forking thread, so a caller that runs other
    threads (a process group's, a logger's; the test suite runs the tools in its own process)
    can leave a lock held forever in the child (seen: a worker stuck in a futex for 20 minutes)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def preprocess_units(units: Sequence[Unit], tokenizer_path: str, output_prefix: str,
                     split: str = "95,5,0", workers: int = 1, seed: int = 1234,
                     progress: bool = True, instruction: bool = False) -> Dict[str, dict]:
    """Tokenize ``units`` and write ``<prefix>_<split>`` datasets; return their manifests plus
    '_stats' (bytes, seconds, resumed parts, per-source documents/tokens/bytes)."""
    tok = load_tokenizer(tokenizer_path)
    weights = parse_split(split)
    parts_dir = Path(f"{output_prefix}.parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    meter = Progress(sum(u.size for u in units), len(units), enabled=progress, workers=workers)
    fail_after = int(os.environ.get(FAULT_ENV, "-1"))
    pool = _worker_context().Pool(workers, _init_worker, (tokenizer_path,)) if workers > 1 else None
    if pool is None:
        _init_worker(tokenizer_path)
    part_prefixes, per_source, resumed, written = [], [], 0, 0
    try:
        for k, unit in enumerate(units):
            prefix = str(parts_dir / f"part-{k:06d}")
            key = None if unit.key is None else {**unit.key, "tokenizer_sha256": tok.sha256}
            manifest = _part_done(prefix, key, tok) if key is not None else None
            reused = manifest is not None
            if not reused:
                if written == fail_after:
                    raise SystemExit(f"fault injection ({FAULT_ENV}): stopped after {written} parts")
                docs = meter.track(_encoded(unit.items(), pool, workers))
                manifest = write_indexed(prefix, docs, tok, with_mask=instruction,
                                         extra=lambda: {"input": key, "bytes": meter.unit_bytes})
                written += 1
                if manifest["num_documents"] == 0:
                    _remove_parts(parts_dir, f"part-{k:06d}")
                    raise CorpusError(f"input {unit.label} holds no documents; remove it from the inputs")
            resumed += reused
            meter.unit_done(unit.size, resumed=reused)
            part_prefixes.append(prefix)
            per_source.append({"source": unit.label, "documents": manifest["num_documents"],
                               "tokens": manifest["num_tokens"], "bytes": manifest["bytes"]})
    except KeyboardInterrupt:
        _rmdir_if_empty(parts_dir)
        raise UserError(f"interrupted: {len(part_prefixes)} finished shard(s) kept in {parts_dir}; "
                        f"run the same command again to resume") from None
    except BaseException:
        _rmdir_if_empty(parts_dir)          # finished parts stay: the next run resumes from them
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    meter.finish()
    sizes = [s["documents"] for s in per_source]
    total = sum(sizes)
    if total < 2:
        raise ConfigError(f"the corpus has {total} document(s); a split needs at least 2")
    which = assign_splits(total, weights, seed)
    manifests = {}
    for s, name in enumerate(SPLITS):
        if weights[s] > 0:
            docs = _split_docs(part_prefixes, sizes, [u.label for u in units], which, s, tok)
            manifests[name] = write_indexed(f"{output_prefix}_{name}", docs, tok, with_mask=instruction)
    _remove_parts(parts_dir)
    manifests["_stats"] = {"bytes": sum(p["bytes"] for p in per_source), "seconds": meter.elapsed(),
                           "resumed_parts": resumed, "sources": per_source}
    return manifests


def _remove_parts(parts_dir: Path, pattern: str = "part-") -> None:
    """Delete the part files this tool writes (nothing else), then the folder if it is empty."""
    for f in parts_dir.glob(pattern + "*"):
        f.unlink()
    _rmdir_if_empty(parts_dir)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _split_docs(prefixes, sizes, labels, which: np.ndarray, s: int, tok) -> Iterator[Tuple]:
    """Documents of split ``s`` from the parts in input order, as (name, ids, mask, source).
    One part is mapped at a time, so the pages read stay bounded too."""
    base = 0
    for prefix, n, label in zip(prefixes, sizes, labels):
        part = open_indexed(prefix, tok, verify="none")
        for d in np.flatnonzero(which[base:base + n] == s):
            yield f"{label} document {d}", part.tokens(int(d)), part.response_mask(int(d)), label
        del part
        base += n


def preprocess(items: Sequence[Tuple], tokenizer_path: str, output_prefix: str, split: str = "95,5,0",
               workers: int = 1, seed: int = 1234, progress: bool = True) -> Dict[str, dict]:
    """In-memory items (name, text) or (name, prompt, response) as one unit (not resumable)."""
    if not items:
        raise ConfigError("no documents to preprocess")
    unit = Unit("items", sum(len(x) for it in items for x in it[1:]), lambda: items, None)
    return preprocess_units([unit], tokenizer_path, output_prefix, split, workers, seed, progress,
                            instruction=len(items[0]) == 3)
