"""The bad-input harness: a case is an entry point (``train``, ``generate`` or a ``tools/*.py``
script) + a command line + an optional setup; run in this process (no interpreter start-up per
case), it must end with a non-zero exit, no traceback, a message naming the problem, and the
watched directories byte-for-byte as before (nothing written half, nothing lost).

A case with ``ok=True`` is an input that must succeed (exit 0, no traceback) and say what it
says (``needles`` in stdout + stderr: a warning, a note), with ``verify(ctx)`` checking the
result against an independent reference; only the shared directories are watched then (the
case writes its outputs into its own). ``env`` sets environment variables for the run."""
from __future__ import annotations

import contextlib
import hashlib
import os
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from tests.conftest import REPO


@dataclass
class Case:
    id: str
    entry: str                                   # "train", "generate" or "tools/<name>.py"
    args: Callable[[object], Sequence[str]]      # ctx -> command line
    needles: Sequence[str]                       # each must appear in stderr (ok: stdout + stderr)
    setup: Optional[Callable[[object], None]] = None
    ok: bool = False                             # an input that must succeed
    verify: Optional[Callable[[object], None]] = None   # ctx -> asserts on what an ok case wrote
    env: Dict[str, str] = field(default_factory=dict)   # ctx-free environment variables ({tmp} allowed)


def snapshot(*roots: Path) -> Dict[str, str]:
    """Every file under ``roots`` -> its sha256 (directories alone do not count)."""
    out = {}
    for root in roots:
        for f in sorted(Path(root).rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def invoke(entry: str, argv: Sequence[str]) -> int:
    """Run an entry point as its command line does; -> the exit code."""
    from megatron_vist2.errors import run_cli
    old = sys.argv
    sys.argv = [entry, *argv]
    try:
        if entry == "train":
            from megatron_vist2 import train
            run_cli(lambda: train.main(list(argv)))
        elif entry == "generate":
            from megatron_vist2 import generate
            run_cli(lambda: generate.main(list(argv)))
        else:
            runpy.run_path(str(REPO / entry), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return 0


@contextlib.contextmanager
def environment(values: Dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check(case: Case, ctx, capsys, watched: Sequence[Path]) -> str:
    if case.setup is not None:
        case.setup(ctx)
    roots = [*watched] if case.ok else [ctx.tmp, *watched]
    before = snapshot(*roots)
    capsys.readouterr()
    with environment({k: v.format(tmp=ctx.tmp) for k, v in case.env.items()}):
        code = invoke(case.entry, [str(a) for a in case.args(ctx)])
    out = capsys.readouterr()
    err = out.err
    if case.ok:
        assert code == 0, f"{case.id}: exit {code}\n{out.out[-2000:]}\n{err[-3000:]}"
    else:
        assert code != 0, f"{case.id}: exit 0\n{out.out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err, err
    said = out.out + err if case.ok else err
    for needle in case.needles:
        assert needle in said, f"{case.id}: {needle!r} not in:\n{said[-3000:]}"
    after = snapshot(*roots)
    assert after == before, f"{case.id}: files changed: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))[:6])
    if case.verify is not None:
        case.verify(ctx)
    return said
