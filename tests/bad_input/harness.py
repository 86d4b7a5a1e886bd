"""The bad-input harness: a case is an entry point (``train``, ``generate`` or a ``tools/*.py``
script) + a command line + an optional setup; run in this process (no interpreter start-up per
case), it must end with a non-zero exit, no traceback, a message naming the problem, and the
watched directories byte-for-byte as before (nothing written half, nothing lost)."""
from __future__ import annotations

import hashlib
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from tests.conftest import REPO


@dataclass
class Case:
    id: str
    entry: str                                   # "train", "generate" or "tools/<name>.py"
    args: Callable[[object], Sequence[str]]      # ctx -> command line
    needles: Sequence[str]                       # each must appear in stderr
    setup: Optional[Callable[[object], None]] = None


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


def check(case: Case, ctx, capsys, watched: Sequence[Path]) -> str:
    if case.setup is not None:
        case.setup(ctx)
    before = snapshot(ctx.tmp, *watched)
    capsys.readouterr()
    code = invoke(case.entry, [str(a) for a in case.args(ctx)])
    out = capsys.readouterr()
    err = out.err
    assert code != 0, f"{case.id}: exit 0\n{out.out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err, err
    for needle in case.needles:
        assert needle in err, f"{case.id}: {needle!r} not in:\n{err[-3000:]}"
    after = snapshot(ctx.tmp, *watched)
    assert after == before, f"{case.id}: files changed: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))[:6])
    return err
