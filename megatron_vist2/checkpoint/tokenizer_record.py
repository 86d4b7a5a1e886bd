"""The tokenizer record of a checkpoint: every checkpoint stores a copy of its tokenizer and its
sha256 (``store_tokenizer``, ``copy_tokenizer``: the one rule for checkpoints and exports), the
tools find it from any working directory (``find_tokenizer``), and a run that resumes or starts
from a checkpoint with another tokenizer is refused unless told (``check_tokenizer_identity``)."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import List, Optional

from ..errors import TokenizerError
from .format import MARKER

TOKENIZER_FILE = "tokenizer.model"     # a sentencepiece tokenizer stored in a step directory
TOKENIZER_DIR = "tokenizer"            # a Hugging Face tokenizer directory stored in one


def check_tokenizer_identity(step_dir: Path, tokenizer, field: str, allow: bool, log=print) -> None:
    """The checkpoint's recorded tokenizer must be ``tokenizer`` (same sha256): another one,
    even of the same vocabulary size, gives every embedding row another meaning."""
    try:
        manifest = json.loads((step_dir / MARKER).read_text())
    except (OSError, ValueError):
        return                                   # reported by the checkpoint checks
    saved = manifest.get("tokenizer_sha256")
    if not saved or saved == tokenizer.sha256:
        return
    where = manifest.get("tokenizer_path") or _saved_tokenizer_setting(step_dir) or "(path not recorded)"
    text = (f"{field} {step_dir} was trained with the tokenizer {where} (sha256 {saved[:12]}..), this "
            f"run uses {tokenizer.path} (sha256 {tokenizer.sha256[:12]}..)")
    if allow:
        log(f"warning: {text}; continuing because checkpoint.allow_new_tokenizer is true")
        return
    raise TokenizerError(f"{text}: every embedding row would mean another piece. Use the checkpoint's "
                         f"tokenizer (data.tokenizer), or set checkpoint.allow_new_tokenizer=true if "
                         f"the change is intended")


def _saved_tokenizer_setting(step_dir: Path) -> Optional[str]:
    import yaml
    try:
        return yaml.safe_load((step_dir / "config.yaml").read_text())["data"]["tokenizer"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def copy_tokenizer(src: Path, dest: Path, file_name: str = TOKENIZER_FILE) -> List[str]:
    """Copy a tokenizer into ``dest``: a sentencepiece file as ``file_name``, a Hugging Face
    tokenizer directory as its files; -> the names written (the one rule for checkpoints and
    exports)."""
    src = Path(src)
    if src.is_file():
        shutil.copy(src, dest / file_name)
        return [file_name]
    names = []
    if src.is_dir():
        dest.mkdir(exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy(f, dest / f.name)
                names.append(f.name)
    return names


def store_tokenizer(step_dir: Path, tokenizer_path: str) -> dict:
    """Copy the tokenizer into a step directory (a few MB at most); -> manifest fields."""
    src = Path(tokenizer_path)
    copy_tokenizer(src, step_dir / TOKENIZER_DIR if src.is_dir() else step_dir)
    return {"tokenizer_path": str(src.resolve())}


def find_tokenizer(step_dir: Path, configured: str, sha256: Optional[str], override: Optional[str] = None,
                   identify=None) -> str:
    """The tokenizer of a checkpoint wherever a tool runs: ``override`` (a flag), else the copy
    stored in the step directory, else the recorded absolute path, else the config's path when
    it exists (relative to the working directory). ``identify(path) -> sha256`` checks a candidate
    against ``sha256`` (the data layer's tokenizer loader; this package does not import it).
    TokenizerError naming what was tried."""
    if override:
        return override
    tried = []
    manifest = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((step_dir / MARKER).read_text())
    for candidate in (step_dir / TOKENIZER_FILE, step_dir / TOKENIZER_DIR,
                      manifest.get("tokenizer_path"), configured):
        if not candidate or not Path(candidate).exists():
            if candidate:
                tried.append(str(candidate))
            continue
        if sha256 and identify is not None and identify(str(candidate)) != sha256:
            tried.append(f"{candidate} (another tokenizer)")
            continue
        return str(candidate)
    raise TokenizerError(f"the tokenizer of {step_dir} cannot be found (tried {', '.join(tried)}; the "
                         f"config's data.tokenizer is relative to the directory training ran in): "
                         f"pass --tokenizer PATH, or run from that directory")
