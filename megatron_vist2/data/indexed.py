"""Tokenized documents on disk: megatron-core's mmap ``.bin``/``.idx`` format plus a manifest.

``<prefix>.bin/.idx``       token ids, one megatron document per corpus document (readable by the
                            Megatron ecosystem's tools); uint16 when the vocabulary fits, else int32
``<prefix>-mask.bin/.idx``  optional (instruction data): uint8 per token, 1 = response token
``<prefix>.json``           manifest: tokenizer sha256 and vocabulary size, dtype, counts, checksums

The manifest is written last and every file is written under a temporary name and renamed, so a
dataset is either complete or absent. ``open_indexed`` checks a dataset against its manifest and
the run's tokenizer before training starts and names the file that is wrong.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from ..errors import DatasetError
from .tokenizer import Tokenizer, file_sha256

FORMAT = "megatron_vist2.indexed/1"


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.int32


def write_indexed(prefix: str, documents: Iterable[Tuple[str, Sequence[int], Optional[Sequence[int]]]],
                  tokenizer: Tokenizer, with_mask: bool = False) -> dict:
    """Write (name, token ids, response mask or None) documents; return the manifest."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    dtype = token_dtype(tokenizer.vocab_size)
    tokens = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    masks = IndexedDatasetBuilder(f"{tmp}-mask.bin", dtype=np.uint8) if with_mask else None
    names: List[str] = []
    num_tokens = num_response = 0
    for name, ids, mask in documents:
        if len(ids) == 0:
            raise DatasetError(f"document '{name}' has no tokens; remove it from the corpus")
        tokens.add_document(torch.from_numpy(np.asarray(ids, dtype=np.int64)), [len(ids)])
        if masks is not None:
            if mask is None or len(mask) != len(ids):
                raise DatasetError(f"document '{name}': response mask missing or of another length")
            masks.add_document(torch.from_numpy(np.asarray(mask, dtype=np.uint8)), [len(ids)])
            num_response += int(np.sum(mask))
        names.append(name)
        num_tokens += len(ids)
    tokens.finalize(f"{tmp}.idx")
    files = [".bin", ".idx"]
    if masks is not None:
        masks.finalize(f"{tmp}-mask.idx")
        files += ["-mask.bin", "-mask.idx"]
    manifest = {
        "format": FORMAT, "tokenizer_sha256": tokenizer.sha256, "tokenizer": str(tokenizer.path),
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
        "num_documents": len(names), "num_tokens": num_tokens,
        "response_mask": with_mask, "num_response_tokens": num_response,
        "sha256": {ext: file_sha256(f"{tmp}{ext}") for ext in files},
        "documents": names,
    }
    Path(f"{tmp}.json").write_text(json.dumps(manifest, indent=1))
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


def open_indexed(prefix: str, tokenizer: Tokenizer, verify_checksums: bool = False) -> IndexedDocs:
    """Open a dataset after checking it against its manifest and the run's tokenizer."""
    manifest_path = Path(f"{prefix}.json")
    for path in (Path(f"{prefix}.bin"), Path(f"{prefix}.idx"), manifest_path):
        if not path.is_file():
            raise DatasetError(f"dataset file {path} is missing: run tools/preprocess_data.py "
                               f"(or fix data.train_prefix / data.valid_prefix)")
    try:
        manifest = json.loads(manifest_path.read_text())
        assert manifest.get("format") == FORMAT
    except (json.JSONDecodeError, AssertionError):
        raise DatasetError(f"{manifest_path} is not a {FORMAT} manifest; re-run preprocessing") from None
    if manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise DatasetError(f"{manifest_path}: built with another tokenizer ({manifest['tokenizer']}, "
                           f"sha256 {manifest['tokenizer_sha256'][:12]}..) than {tokenizer.path} "
                           f"({tokenizer.sha256[:12]}..); re-run tools/preprocess_data.py")
    dtype = np.dtype(manifest["dtype"])
    if dtype != np.dtype(token_dtype(tokenizer.vocab_size)):
        raise DatasetError(f"{manifest_path}: dtype {dtype} cannot hold a vocabulary of "
                           f"{tokenizer.vocab_size}; re-run preprocessing")
    files = [".bin", ".idx"] + (["-mask.bin", "-mask.idx"] if manifest["response_mask"] else [])
    for ext in files:
        if not Path(f"{prefix}{ext}").is_file():
            raise DatasetError(f"dataset file {prefix}{ext} is missing (listed in {manifest_path})")
    expected = manifest["num_tokens"] * dtype.itemsize
    actual = os.path.getsize(f"{prefix}.bin")
    if actual != expected:
        raise DatasetError(f"{prefix}.bin has {actual} bytes, its manifest expects {expected}: "
                           f"the file is truncated or replaced; re-run preprocessing")
    if verify_checksums:
        for ext in files:
            if file_sha256(f"{prefix}{ext}") != manifest["sha256"][ext]:
                raise DatasetError(f"{prefix}{ext}: checksum differs from {manifest_path}")
    try:
        tokens = IndexedDataset(str(prefix))
        masks = IndexedDataset(f"{prefix}-mask") if manifest["response_mask"] else None
    except (AssertionError, ValueError, OSError) as exc:
        raise DatasetError(f"{prefix}.idx cannot be read as a megatron indexed dataset ({exc})") from None
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
