"""Reading and writing Hugging Face model directories (safetensors shards + index), shared by
every architecture mapping: streaming writes (one shard in memory), lazy reads, and a config check
that names each mismatching field."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Tuple

import torch

from ..errors import CheckpointError


def write_safetensors_dir(tensors: Iterable[Tuple[str, torch.Tensor]], out_dir: str,
                          shard_bytes: int, save_config: Callable[[str], None]) -> Path:
    """Write (name, tensor) pairs as ``model-NNNNN.safetensors`` shards of at most
    ``shard_bytes`` plus ``model.safetensors.index.json`` and the config (``save_config(dir)``),
    into a temporary directory renamed to ``out_dir`` when complete."""
    from safetensors.torch import save_file
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new output directory")
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    shard, size, files, index = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            files.append(name)
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for name, t in tensors:
        t = t.contiguous().clone()
        if size + t.nbytes > shard_bytes:
            flush()
        shard[name] = t
        size += t.nbytes
    flush()
    total = sum((tmp / f).stat().st_size for f in files)
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
            self._open[f] = safe_open(str(f), framework="pt")
            for k in self._open[f].keys():
                self._where[k] = f

    def names(self):
        return list(self._where)

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
