"""Directories of safetensors shards, shared by the Hugging Face mappings (convert/) and by
consolidated checkpoints: streaming writes (one shard in memory) and lazy reads."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError, UserError


def shard_bytes(gb: float) -> int:
    """--shard-gb (the largest safetensors shard, in GiB) -> bytes; UserError unless a finite
    number > 0 (the export and reshard tools' one rule)."""
    if not (math.isfinite(gb) and gb > 0):
        raise UserError(f"--shard-gb must be > 0 (a finite number of GB), got {gb}")
    return int(gb * 2 ** 30)


def write_shards(tensors: Iterable[Tuple[str, torch.Tensor]], directory: Path, shard_bytes: int,
                 file_name: Callable[[int], str], log: Callable[[str], None] = lambda _: None
                 ) -> Dict[str, str]:
    """Write (key, tensor) pairs into ``directory`` as safetensors files of at most
    ``shard_bytes`` (``file_name(n)`` names the n-th, from 1), one shard in memory at a time;
    -> key -> file name."""
    shard, size, count, index = {}, 0, 0, {}

    def flush():
        nonlocal shard, size, count
        if shard:
            count += 1
            name = file_name(count)
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            log(f"  wrote {directory.name}/{name} ({size / 2 ** 20:,.1f} MiB)")
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for key, t in tensors:
        t = t.contiguous().clone()        # a slice (e.g. vocabulary rows) must not pin its base
        if size + t.nbytes > shard_bytes:
            flush()
        shard[key] = t
        size += t.nbytes
    flush()
    return index


class SafetensorsDir:
    """The tensors of a Hugging Face directory, read one at a time (``get(name)``)."""

    def __init__(self, hf_dir: str):
        self.dir = Path(hf_dir)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.dir} holds no *.safetensors files (a Hugging Face model "
                                  f"directory saved with safe_serialization is expected)")
        self._open, self._where = {}, {}
        for f in files:
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except Exception as exc:               # truncated or not a safetensors file
                raise CheckpointError(f"{f} cannot be read ({type(exc).__name__}: {exc})") from None
            for k in self._open[f].keys():
                self._where[k] = f

    def names(self):
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.dir}: tensor '{name}' is missing")
        return self._open[self._where[name]].get_tensor(name)

    def shape(self, name: str) -> Tuple[int, ...]:
        """A tensor's shape from its file's header (no data read)."""
        if name not in self._where:
            raise CheckpointError(f"{self.dir}: tensor '{name}' is missing")
        return tuple(self._open[self._where[name]].get_slice(name).get_shape())

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def config(self) -> dict:
        return read_config_json(self.dir)


def read_config_json(directory) -> dict:
    """A Hugging Face directory's config.json as a dict; CheckpointError naming the file and
    what is wrong with it (missing, not UTF-8, not JSON, not an object)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object ({{...}}) at the top level, got "
                              f"{type(config).__name__}")
    return config
