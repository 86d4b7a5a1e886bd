"""Reading and writing directories of safetensors shards, shared by every architecture mapping
and by consolidated checkpoints: streaming writes (one shard in memory), lazy reads, and a config
check that names each mismatching field."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Tuple

import torch

from ..errors import CheckpointError


def write_shards(tensors: Iterable[Tuple[str, torch.Tensor]], directory: Path, shard_bytes: int,
                 file_name: Callable[[int], str], log: Callable[[str], None] = lambda _: None
                 ) -> Dict[str, str]:
    """Write (key, tensor) pairs into ``directory`` as safetensors files of at most
    ``shard_bytes`` (``file_name(n)`` names the n-th, from 1), one shard in memory at a time;
    -> key -> file name."""
    from safetensors.torch import save_file
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


def mapped_tensors(pairs: Iterable[Tuple[str, str, bool]], weight: Callable[[str], torch.Tensor],
                   vocab_size: int) -> Iterator[Tuple[str, torch.Tensor]]:
    """(exported name, tensor) for each (our name, exported name, is a vocabulary matrix) pair,
    ``weight(our name)`` read one at a time, vocabulary padding rows cut."""
    for ours, name, vocab in pairs:
        t = weight(ours)
        yield name, (t[:vocab_size] if vocab else t)


def write_safetensors_dir(tensors: Iterable[Tuple[str, torch.Tensor]], out_dir: str,
                          shard_bytes: int, save_config: Callable[[str], None]) -> Path:
    """Write (name, tensor) pairs as ``model-NNNNN.safetensors`` shards of at most
    ``shard_bytes`` plus ``model.safetensors.index.json`` and the config (``save_config(dir)``),
    into a temporary directory renamed to ``out_dir`` when complete."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new output directory")
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    index = write_shards(tensors, tmp, shard_bytes, lambda n: f"model-{n:05d}.safetensors")
    total = sum((tmp / f).stat().st_size for f in set(index.values()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    save_config(str(tmp))
    os.replace(tmp, out)
    return out


class SafetensorsDir:
    """The tensors of a Hugging Face directory, read one at a time (``get(name)``)."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open
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

    def config(self) -> dict:
        path = self.dir / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: not a Hugging Face model directory")
        return json.loads(path.read_text())


def check_fields(where: Path, found: Dict, expect: Dict, what: str) -> None:
    """Every ``expect`` field must equal ``found``'s (floats to 1e-6 relative: configs store
    them at different precisions); the error lists each mismatch."""
    import math

    def same(a, b):
        if isinstance(a, float) or isinstance(b, float):
            return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)
        return a == b
    wrong = {k: (found.get(k), v) for k, v in expect.items() if not same(found.get(k), v)}
    if wrong:
        raise CheckpointError(f"{where} does not match the configured {what} (field: checkpoint vs "
                              f"config): {wrong}")


def check_all_used(where: Path, names, used, ignored_prefixes=()) -> list:
    """Tensors of ``names`` neither used nor under an ``ignored_prefixes`` entry are an error;
    -> the ignored ones (for the caller to report)."""
    ignored = [n for n in names if n not in used and n.startswith(tuple(ignored_prefixes))]
    extra = [n for n in names if n not in used and n not in ignored]
    if extra:
        raise CheckpointError(f"{where} holds {len(extra)} tensor(s) the mapping does not use: "
                              f"{', '.join(sorted(extra)[:6])}")
    return ignored
