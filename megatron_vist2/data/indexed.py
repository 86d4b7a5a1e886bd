"""Tokenized documents on disk: megatron-core's mmap ``.bin``/``.idx`` format plus a manifest.

The manifest (``<prefix>.json``) records the tokenizer's sha256 and vocabulary size, the counts
and the checksums of both files, so a dataset built with another tokenizer, or a truncated file,
is refused before training starts. Files are written under temporary names and renamed at the end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from ..errors import DatasetError

from .tokenizer import Tokenizer, file_sha256


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.int32


def write_indexed(prefix: str, documents: Iterable[Sequence[int]], tokenizer: Tokenizer,
                  names: List[str]) -> dict:
    """Write token documents to ``prefix.bin/.idx/.json`` atomically; return the manifest."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    dtype = token_dtype(tokenizer.vocab_size)
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    num_docs = num_tokens = 0
    for name, ids in zip(names, documents):
        if len(ids) == 0:
            raise DatasetError(f"document '{name}' has no tokens; remove it from the corpus")
        builder.add_document(torch.tensor(np.asarray(ids, dtype=np.int64)), [len(ids)])
        num_docs += 1
        num_tokens += len(ids)
    builder.finalize(f"{tmp}.idx")
    manifest = {
        "format": "megatron_vist2.indexed/1", "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
        "num_documents": num_docs, "num_tokens": num_tokens,
        "bin_sha256": file_sha256(f"{tmp}.bin"), "idx_sha256": file_sha256(f"{tmp}.idx"),
        "documents": names,
    }
    Path(f"{tmp}.json").write_text(json.dumps(manifest, indent=1))
    for ext in (".bin", ".idx", ".json"):          # the manifest goes last: it marks completeness
        os.replace(f"{tmp}{ext}", f"{prefix}{ext}")
    return manifest


def open_indexed(prefix: str, tokenizer: Tokenizer, verify_checksums: bool = False) -> IndexedDataset:
    """Open a dataset after checking it against its manifest and the run's tokenizer.

    Arrays read from it are views of its mmap, valid only while the returned object is alive
    (megatron's IndexedDataset unmaps in __del__): keep the object, or copy what you keep."""
    manifest_path = Path(f"{prefix}.json")
    for path in (Path(f"{prefix}.bin"), Path(f"{prefix}.idx"), manifest_path):
        if not path.is_file():
            raise DatasetError(f"dataset file {path} is missing: run tools/preprocess_data.py "
                               f"(or fix data.train_prefix / data.valid_prefix)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("tokenizer_sha256") != tokenizer.sha256:
        raise DatasetError(f"{manifest_path}: built with another tokenizer (sha256 "
                           f"{str(manifest.get('tokenizer_sha256'))[:12]}.. vs {tokenizer.path} "
                           f"{tokenizer.sha256[:12]}..); re-run tools/preprocess_data.py")
    expected_bytes = manifest["num_tokens"] * np.dtype(manifest["dtype"]).itemsize
    actual_bytes = os.path.getsize(f"{prefix}.bin")
    if actual_bytes != expected_bytes:
        raise DatasetError(f"{prefix}.bin has {actual_bytes} bytes, its manifest expects "
                           f"{expected_bytes}: the file is truncated or replaced; re-run preprocessing")
    if verify_checksums:
        for ext in ("bin", "idx"):
            if file_sha256(f"{prefix}.{ext}") != manifest[f"{ext}_sha256"]:
                raise DatasetError(f"{prefix}.{ext}: checksum differs from {manifest_path}")
    ds = IndexedDataset(str(prefix))
    if len(ds) != manifest["num_documents"]:
        raise DatasetError(f"{prefix}.idx lists {len(ds)} documents, manifest {manifest['num_documents']}")
    return ds
