"""What keeps a run from losing a checkpoint or training silently wrong (docs/trust.md).

- ``start_point``: where a run starts, given ``checkpoint.save_dir``'s contents. A save directory
  with complete checkpoints is resumed from (its ``latest``, or the newest complete step when
  ``latest`` is missing) or refused: a new run never overwrites a complete checkpoint.
- ``advance_latest``: the only writer of ``latest``; it never moves the pointer backwards.
- ``check_writable_target``: writing tools refuse an output directory that already holds files.
- ``check_tokenizer_identity``: resuming or ``checkpoint.init_from`` with another tokenizer (even
  of the same size) is refused unless ``checkpoint.allow_new_tokenizer`` says it is intended.
- ``store_tokenizer`` / ``find_tokenizer``: every checkpoint carries a copy of its tokenizer, so
  the tools find it from any working directory.
- ``refuse_non_finite``: weights with NaN/inf are never saved as a checkpoint.
- ``disk_errors``: a full disk (or another OS error) during a save ends in a message.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from ..errors import CheckpointError, ConfigError, TokenizerError
from .format import MARKER, check_loadable, complete_tags, partial_checkpoints, read_config_yaml, step_of

LATEST = "latest"
TOKENIZER_FILE = "tokenizer.model"     # a sentencepiece tokenizer stored in a step directory
TOKENIZER_DIR = "tokenizer"            # a Hugging Face tokenizer directory stored in one


# ------------------------------------------------------------------ save directories
def read_latest(root: Path) -> Optional[str]:
    try:
        return (root / LATEST).read_text().strip() or None
    except OSError:
        return None


def start_point(save_dir: str, load_dir: Optional[str], auto_resume: bool,
                init_from: Optional[str], log=print) -> Optional[str]:
    """Where a run resumes from (None: from scratch or ``init_from``), or CheckpointError when
    starting would overwrite a complete checkpoint in ``save_dir``."""
    root = Path(save_dir)
    complete, partial = complete_tags(root), partial_checkpoints(root)
    source = load_dir or None
    if source is not None and not (Path(source) / MARKER).is_file():
        check_loadable(source)          # a wrong load_dir is named first, before any overwrite rule
    if source is None and auto_resume and complete:
        latest = read_latest(root)
        if latest is None or not (root / latest / MARKER).is_file():
            what = "has no 'latest' file" if latest is None else f"'latest' names '{latest}', which is not complete"
            log(f"{root} {what}: resuming from its newest complete checkpoint {complete[-1]}")
            source = str(root / complete[-1])
        else:
            source = str(root)
    if complete and source is None:
        how = "checkpoint.init_from starts a new stage" if init_from else \
            "checkpoint.auto_resume is false" if not auto_resume else "this run starts from scratch"
        raise CheckpointError(
            f"checkpoint.save_dir {root} already holds complete checkpoints ({', '.join(complete[-3:])}) "
            f"and {how}: saving would overwrite them. Resume them (checkpoint.auto_resume=true, no "
            f"checkpoint.load_dir) or set checkpoint.save_dir to a new directory")
    if complete and source is not None:
        resumed = _resumed_step(source)
        newer = [t for t in complete if step_of(t) > resumed]
        if newer:
            raise CheckpointError(
                f"checkpoint.save_dir {root} holds complete checkpoints newer than the one this run "
                f"resumes from ({', '.join(newer[-3:])}; {source} is at step {resumed}): saving would "
                f"overwrite them. Resume the newest (echo {complete[-1]} > {root / LATEST}), or set "
                f"checkpoint.save_dir to a new directory")
    if partial and not complete:
        log(f"note: {root} holds only an unfinished save ({', '.join(partial)}: a run stopped while "
            f"saving); it is ignored and replaced when this run saves that step")
    return source


def _resumed_step(path: str) -> int:
    p = Path(path)
    if (p / MARKER).is_file():
        return step_of(p.name)
    latest = read_latest(p) or (complete_tags(p) or [None])[-1]
    return step_of(latest) if latest else -1


def advance_latest(root: Path, tag: str, write_atomic) -> bool:
    """Point ``root/latest`` at ``tag`` unless it already names a newer complete checkpoint
    (-> False). The one rule every writer of ``latest`` follows: it never moves backwards."""
    current = read_latest(root)
    if current is not None and step_of(current) > step_of(tag) and (root / current / MARKER).is_file():
        return False
    write_atomic(root / LATEST, tag)
    return True


def check_writable_target(out: str, flag: str = "--out") -> Path:
    """A writing tool's output directory: new, or empty (it never writes into another run's
    files). -> the path."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{flag} {p} exists and is a file: choose a new output directory")
    if p.is_dir() and any(p.iterdir()):
        held = sorted(x.name for x in p.iterdir())
        raise CheckpointError(f"{flag} {p} already exists and is not empty ({', '.join(held[:4])}"
                              f"{' ...' if len(held) > 4 else ''}): choose a new output directory "
                              f"(this tool never writes into or over another directory's files)")
    return p


# ------------------------------------------------------------------ tokenizer identity
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
    try:
        return read_config_yaml(step_dir)["data"]["tokenizer"]
    except (CheckpointError, KeyError, TypeError):
        return None


def copy_tokenizer(src: Path, dest: Path, file_name: str = TOKENIZER_FILE,
                   files: Optional[Callable[[Path], List[Path]]] = None) -> List[str]:
    """Copy a tokenizer into ``dest``: a sentencepiece file as ``file_name``, a Hugging Face
    tokenizer directory as its files (``files(src)``: the data layer's ``tokenizer_files``,
    which leaves out the weights and code of a model directory; default every file); -> the
    names written. (Exports write theirs with convert/tokens.py ``write_hf_tokenizer``.)"""
    src = Path(src)
    if src.is_file():
        shutil.copy(src, dest / file_name)
        return [file_name]
    names = []
    if src.is_dir():
        dest.mkdir(exist_ok=True)
        for f in (files(src) if files else sorted(p for p in src.iterdir() if p.is_file())):
            shutil.copy(f, dest / f.name)
            names.append(f.name)
    return names


def store_tokenizer(step_dir: Path, tokenizer_path: str,
                    files: Optional[Callable[[Path], List[Path]]] = None) -> dict:
    """Copy the tokenizer into a step directory (a few MB at most); -> manifest fields."""
    src = Path(tokenizer_path)
    copy_tokenizer(src, step_dir / TOKENIZER_DIR if src.is_dir() else step_dir, files=files)
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


# ------------------------------------------------------------------ weights and disks
def refuse_non_finite(module, step: int, save_dir: str, device) -> None:
    """Collective: every rank checks its own parameters (ZeRO-3: its partitions); any NaN/inf on
    any rank -> CheckpointError on every rank, before anything is written."""
    import torch
    import torch.distributed as dist
    bad = torch.zeros((), dtype=torch.float32, device=device)
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t.data
        # a sum is non-finite when any element is (or, rarely, on overflow: then the exact
        # check); one pass without a mask tensor: 25x faster than isfinite().all() on a CPU
        if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            bad.fill_(1.0)
            break
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() > 0:
        latest = read_latest(Path(save_dir))
        raise CheckpointError(
            f"the weights hold NaN/inf after step {step} (training diverged): not saved as a "
            f"checkpoint. " + (f"The last good checkpoint is {Path(save_dir) / latest}: restart from it "
                               f"with a lower optim.lr (or more optim.warmup_steps, optim.grad_clip)"
                               if latest else "No checkpoint was saved before: restart with a lower "
                               "optim.lr (or more optim.warmup_steps, optim.grad_clip)"))


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """An OS error while writing a checkpoint -> CheckpointError naming the directory and, for a
    full disk or quota, saying so (the unfinished save stays ``.partial`` and is ignored)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise CheckpointError(
            f"saving to {where} failed: " + ("the disk is full (no space left on device)" if full
                                            else f"{exc.strerror or exc}")
            + "; the previous complete checkpoint and 'latest' are untouched. "
            + ("Free space or set checkpoint.save_dir elsewhere (checkpoint.keep_last limits how many "
               "are kept), then resume" if full else "fix the directory, then resume")) from None


def check_dir_writable(path: str, field: str) -> None:
    """Create ``path`` and write a probe file in it, or ConfigError naming the field."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{field} {p} is not writable ({exc.strerror or exc}); choose a directory "
                          f"this user can write") from None


def raise_diverged(reason: str, save_dir: str) -> None:
    """Training diverged (``reason``): stop with the way back (the last complete checkpoint,
    which refuse_non_finite guarantees holds finite weights)."""
    latest = read_latest(Path(save_dir))
    raise CheckpointError(
        f"{reason}; nothing was saved from this point. "
        + (f"Restart from the last good checkpoint ({Path(save_dir) / latest}; auto-resume picks it) "
           if latest else "No checkpoint was saved before. Restart ")
        + "with a lower optim.lr, more optim.warmup_steps or optim.grad_clip > 0")


def inject_nan_fault(module, step: int) -> None:
    """Tests only: ``MEGATRON_VIST2_FAULT=nan-weights:STEP`` puts a NaN into the first parameter
    after optimizer step STEP, as an update that diverges while its loss is still finite does
    (an fp32 learning rate large enough to do it for real cannot be converted by torch's Adam)."""
    spec = os.environ.get("MEGATRON_VIST2_FAULT", "")
    if spec == f"nan-weights:{step}":
        import torch
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] = float("nan")
