"""Tokenized documents on disk: megatron-core's mmap ``.bin``/``.idx`` format plus a manifest.

``<prefix>.bin/.idx``       token ids, one megatron document per corpus document (readable by the
                            Megatron ecosystem's tools); uint16 when the vocabulary fits, else int32
``<prefix>-mask.bin/.idx``  optional (instruction data): uint8 per token, 1 = response token
``<prefix>.json``           manifest: tokenizer sha256 and vocabulary size, dtype, counts, checksums
                            (full sha256 and a sampled one per file), and per input source the
                            range of documents it contributed and their tokens

The manifest is written last and every file is written under a temporary name and renamed, so a
dataset is either complete or absent. ``open_indexed`` checks a dataset against its manifest and
the run's tokenizer before training starts and names the file that is wrong: by default it hashes
every file up to ``QUICK_FULL_BYTES`` whole and larger ones at ``SAMPLE_BLOCKS`` evenly spread
blocks (cheap at start-up, catches a file rewritten in place; said on the console when it
happens); ``tools/inspect_data.py --verify`` hashes all.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ..errors import DatasetError
from .tokenizer import Tokenizer, file_sha256

FORMAT = "megatron_vist2.indexed/1"
QUICK_FULL_BYTES = 64 << 20      # files up to this size are hashed whole when a dataset is opened
SAMPLE_BLOCKS, SAMPLE_BLOCK = 256, 4096   # larger ones: 1 MiB read at evenly spaced offsets


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.int32


def sampled_sha256(path) -> str:
    """sha256 of the size and SAMPLE_BLOCKS blocks spread evenly over the file (first and last
    included): a bounded read that still sees most in-place rewrites of a large file."""
    size = os.path.getsize(path)
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        span = max(size - SAMPLE_BLOCK, 0)
        for k in range(SAMPLE_BLOCKS):
            fh.seek(span * k // (SAMPLE_BLOCKS - 1))
            h.update(fh.read(SAMPLE_BLOCK))
    return h.hexdigest()


def _write_tmp(tmp: Path, documents, tokenizer, with_mask: bool, extra):
    """The files of a dataset under the temporary prefix ``tmp``, manifest last."""
    dtype = token_dtype(tokenizer.vocab_size)
    tokens = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    masks = IndexedDatasetBuilder(f"{tmp}-mask.bin", dtype=np.uint8) if with_mask else None
    sources: List[dict] = []
    num_docs = num_tokens = num_response = 0
    for doc in documents:
        name, ids, mask = doc[:3]
        if len(ids) == 0:
            raise DatasetError(f"document '{name}' has no tokens; remove it from the corpus")
        tokens.add_document(np.asarray(ids), [len(ids)])
        if masks is not None:
            if mask is None or len(mask) != len(ids):
                raise DatasetError(f"document '{name}': response mask missing or of another length")
            masks.add_document(np.asarray(mask, dtype=np.uint8), [len(ids)])
            num_response += int(np.sum(mask))
        source = doc[3] if len(doc) > 3 else None
        if not sources or sources[-1]["source"] != source:
            sources.append({"source": source, "first_document": num_docs, "documents": 0, "tokens": 0})
        sources[-1]["documents"] += 1
        sources[-1]["tokens"] += len(ids)
        num_docs += 1
        num_tokens += len(ids)
    tokens.finalize(f"{tmp}.idx")
    files = [".bin", ".idx"]
    if masks is not None:
        masks.finalize(f"{tmp}-mask.idx")
        files += ["-mask.bin", "-mask.idx"]
    manifest = {
        "format": FORMAT, "tokenizer_sha256": tokenizer.sha256, "tokenizer": str(tokenizer.path),
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
        "num_documents": num_docs, "num_tokens": num_tokens,
        "response_mask": with_mask, "num_response_tokens": num_response,
        "sha256": {ext: file_sha256(f"{tmp}{ext}") for ext in files},
        "sampled_sha256": {ext: sampled_sha256(f"{tmp}{ext}") for ext in files},
        "sources": [s for s in sources if s["source"] is not None],
        **(extra() if extra else {}),
    }
    Path(f"{tmp}.json").write_text(json.dumps(manifest, indent=1))
    return files, manifest


def write_indexed(prefix: str, documents: Iterable[Tuple], tokenizer: Tokenizer,
                  with_mask: bool = False, extra=None) -> dict:
    """Write (name, token ids, response mask or None[, source]) documents, streamed (memory is a
    few integers per document); return the manifest. Consecutive documents of one source form
    one entry of the manifest's ``sources`` (first document, documents, tokens). ``extra``: a
    function returning more manifest fields, called once the documents are written."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    try:
        files, manifest = _write_tmp(tmp, documents, tokenizer, with_mask, extra)
    except BaseException:               # an error or an interrupt: leave nothing half-written
        for ext in (".bin", ".idx", "-mask.bin", "-mask.idx", ".json"):
            Path(f"{tmp}{ext}").unlink(missing_ok=True)
        raise
    for ext in files + [".json"]:                  # the manifest goes last: it marks completeness
        os.replace(f"{tmp}{ext}", f"{prefix}{ext}")
    return manifest


@dataclass
class IndexedDocs:
    """An opened dataset. Arrays it returns are views of its mmaps: keep this object alive."""
    prefix: str
    manifest: dict
    tokens_ds: IndexedDataset
    mask_ds: Optional[IndexedDataset]

    def __len__(self) -> int:
        return len(self.tokens_ds)

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens_ds.sequence_lengths

    def tokens(self, doc: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        return self.tokens_ds.get(doc, offset=offset, length=length)

    def response_mask(self, doc: int, offset: int = 0, length: Optional[int] = None):
        return None if self.mask_ds is None else self.mask_ds.get(doc, offset=offset, length=length)


REQUIRED = {"tokenizer_sha256": str, "tokenizer": str, "vocab_size": int, "dtype": str,
            "num_documents": int, "num_tokens": int, "response_mask": bool, "sha256": dict}


def read_manifest(prefix: str) -> dict:
    """The manifest of a dataset, checked for shape; names the file and the fix when it is not one."""
    manifest_path = Path(f"{prefix}.json")
    for path in (Path(f"{prefix}.bin"), Path(f"{prefix}.idx"), manifest_path):
        if not path.is_file():
            raise DatasetError(f"dataset file {path} is missing: run tools/preprocess_data.py "
                               f"(or fix data.train_prefix / data.valid_prefix)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        ok = isinstance(manifest, dict) and manifest.get("format") == FORMAT and \
            all(isinstance(manifest.get(k), t) for k, t in REQUIRED.items())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise DatasetError(f"{manifest_path} is not a {FORMAT} manifest (unreadable, damaged or "
                           f"from another tool); re-run tools/preprocess_data.py")
    return manifest


def dataset_files(manifest: dict) -> List[str]:
    return [".bin", ".idx"] + (["-mask.bin", "-mask.idx"] if manifest["response_mask"] else [])


_SAMPLED_NOTED = set()            # files whose sampled check was already said on this process


def check_contents(prefix: str, manifest: dict, full: bool = False, log=print) -> None:
    """Each file against the manifest's checksums: whole files when ``full`` or small, else the
    sampled hash, which is said on the console (``log``, once per file and process: a deliberate
    trade-off of start-up time). Raises naming the file and the fix."""
    for ext in dataset_files(manifest):
        path = f"{prefix}{ext}"
        size = os.path.getsize(path)
        whole = full or size <= QUICK_FULL_BYTES
        want = (manifest["sha256"] if whole else manifest.get("sampled_sha256", {})).get(ext)
        if not whole and path not in _SAMPLED_NOTED:
            _SAMPLED_NOTED.add(path)
            how = (f"checked at {SAMPLE_BLOCKS} sampled blocks of {SAMPLE_BLOCK // 1024} KiB, not hashed whole"
                   if want is not None else "its manifest predates sampled checksums: not checked")
            log(f"note: {path} ({size / 2 ** 30:,.2f} GiB, over {QUICK_FULL_BYTES >> 20} MiB) is {how} at "
                f"start-up (a trade-off of start-up time); `python tools/inspect_data.py --prefix {prefix} "
                f"--verify` hashes every byte")
        if want is None:
            continue              # a manifest from before sampled hashes: only full checks apply
        if (file_sha256(path) if whole else sampled_sha256(path)) != want:
            raise DatasetError(f"{path}: contents differ from the checksum in {prefix}.json: the "
                               f"file was changed after preprocessing; restore it or re-run "
                               f"tools/preprocess_data.py for this dataset")


def open_indexed(prefix: str, tokenizer: Tokenizer, verify: str = "quick") -> IndexedDocs:
    """Open a dataset after checking it against its manifest and the run's tokenizer.
    ``verify``: 'quick' (default: small files whole, large ones sampled), 'full' or 'none'."""
    manifest_path = Path(f"{prefix}.json")
    manifest = read_manifest(prefix)
    if manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise DatasetError(f"{manifest_path}: built with another tokenizer ({manifest['tokenizer']}, "
                           f"sha256 {manifest['tokenizer_sha256'][:12]}..) than {tokenizer.path} "
                           f"({tokenizer.sha256[:12]}..); re-run tools/preprocess_data.py")
    try:
        dtype = np.dtype(manifest["dtype"])
    except TypeError:
        raise DatasetError(f"{manifest_path}: unknown dtype '{manifest['dtype']}'; re-run preprocessing") from None
    if dtype != np.dtype(token_dtype(tokenizer.vocab_size)):
        raise DatasetError(f"{manifest_path}: dtype {dtype} cannot hold a vocabulary of "
                           f"{tokenizer.vocab_size}; re-run preprocessing")
    files = dataset_files(manifest)
    for ext in files:
        if not Path(f"{prefix}{ext}").is_file():
            raise DatasetError(f"dataset file {prefix}{ext} is missing (listed in {manifest_path})")
    expected = manifest["num_tokens"] * dtype.itemsize
    actual = os.path.getsize(f"{prefix}.bin")
    if actual != expected:
        raise DatasetError(f"{prefix}.bin has {actual} bytes, its manifest expects {expected}: "
                           f"the file is truncated or replaced; re-run preprocessing")
    if verify != "none":
        check_contents(prefix, manifest, full=verify == "full")
    try:
        tokens = IndexedDataset(str(prefix))
        masks = IndexedDataset(f"{prefix}-mask") if manifest["response_mask"] else None
    except (AssertionError, ValueError, OSError, IndexError) as exc:
        raise DatasetError(f"{prefix}.idx cannot be read as a megatron indexed dataset ({exc}); "
                           f"re-run tools/preprocess_data.py") from None
    if tokens.index.dtype != dtype.type:
        raise DatasetError(f"{prefix}.idx stores {np.dtype(tokens.index.dtype)} tokens but "
                           f"{manifest_path} says {dtype}: the files do not belong together")
    if len(tokens) != manifest["num_documents"] or int(tokens.sequence_lengths.sum()) != manifest["num_tokens"]:
        raise DatasetError(f"{prefix}.idx lists {len(tokens)} documents / "
                           f"{int(tokens.sequence_lengths.sum())} tokens, {manifest_path} "
                           f"{manifest['num_documents']} / {manifest['num_tokens']}")
    if masks is not None and not np.array_equal(masks.sequence_lengths, tokens.sequence_lengths):
        raise DatasetError(f"{prefix}-mask.idx does not match {prefix}.idx document by document")
    return IndexedDocs(str(prefix), manifest, tokens, masks)
