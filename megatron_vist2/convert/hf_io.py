"""What every Hugging Face mapping shares: cutting vocabulary padding on export, writing a model
directory atomically, and checks that name each mismatching config field or unused tensor. The
safetensors shard reader and writer are checkpoint/safetensors_io.py."""
from __future__ import annotations

import json
import os
import shutil
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
    into a temporary directory renamed to ``out_dir`` when complete (removed on any error)."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new output directory")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():                      # left by an export that was killed: ours to replace
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        index = write_shards(tensors, tmp, shard_bytes, lambda n: f"model-{n:05d}.safetensors")
        total = sum((tmp / f).stat().st_size for f in set(index.values()))
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": index}, indent=1))
        save_config(str(tmp))             # config, code, tokenizer: checked before the rename
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)     # nothing half-written is left behind
        raise
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


def transformers_shapes(config_path: Path, build: Callable[[], torch.nn.Module]) -> Dict[str, tuple]:
    """name -> shape of every tensor of the model transformers builds from ``config_path``
    (``build()``, on the meta device: no memory). transformers' own refusal of the config is a
    CheckpointError naming the file."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; each is reported by file
        raise CheckpointError(f"{config_path}: transformers cannot build a model from it "
                              f"({type(exc).__name__}: {exc}); fix the field or value it names") from None
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def check_shapes(directory, names: Iterable[str], expected: Dict[str, tuple], config_path: Path,
                 strip: str = "") -> None:
    """Each tensor of ``names`` (read from the file headers of ``directory``, a SafetensorsDir)
    must have the shape ``config_path`` implies (``expected``; names compared without a leading
    ``strip``); the error names the file, the tensor, both shapes, before anything is written."""
    def key(n):
        return n[len(strip):] if strip and n.startswith(strip) else n
    want = {key(n): s for n, s in expected.items()}
    wrong = []
    for name in names:
        found, shape = directory.shape(name), want.get(key(name))
        if shape is not None and tuple(found) != tuple(shape):
            wrong.append(f"{directory.file_of(name).name}: {name} has shape {list(found)}, "
                         f"config.json implies {list(shape)}")
    if wrong:
        raise CheckpointError(f"{directory.dir} holds {len(wrong)} tensor(s) whose shape contradicts "
                              f"{config_path} (a damaged or mislabelled model; nothing was written):\n  - "
                              + "\n  - ".join(wrong[:8]) + ("\n  - ..." if len(wrong) > 8 else ""))
