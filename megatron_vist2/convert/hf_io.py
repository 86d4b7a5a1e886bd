"""What every Hugging Face mapping shares: cutting vocabulary padding on export, writing a model
directory atomically, and checks that name each mismatching config field or unused tensor. The
safetensors shard reader and writer are checkpoint/safetensors_io.py."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Tuple

import torch

from ..checkpoint.safetensors_io import write_shards
from ..errors import CheckpointError


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
