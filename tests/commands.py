"""Command lines run by the tests without an interpreter start-up each.

``command(*argv)``: ``python ARGV`` (``-m MODULE ...`` or ``SCRIPT.py ...``) run in this process
(runpy, as ``__main__``), with its stdout and stderr captured; returns what ``subprocess.run``
returned (returncode, stdout, stderr). An entry point finds the session's single-rank process
group already set up (tests/conftest.py ``dist_env``), as a bare run would set it up.

``batch(commands)``: several command lines that need a process of their own (they set up other
process groups, e.g. tools/dry_run.py's fake backend) in *one* fresh interpreter, one after
another; -> one result per command.

``MEGATRON_VIST2_TEST_FRESH_LAUNCH=1`` runs every command in its own subprocess instead (the old
way: for comparison, or when in-process state is suspected).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
FRESH_ENV = "MEGATRON_VIST2_TEST_FRESH_LAUNCH"
# One thread per run, as torchrun gives each rank: on a shared or small machine a second OpenMP
# thread spins at every barrier (a 2-step tiny run took 155 s instead of seconds at load 70).
THREADS_ENV = "OMP_NUM_THREADS"


def fresh() -> bool:
    return os.environ.get(FRESH_ENV) == "1"


def _env(extra: Optional[Dict[str, str]] = None) -> dict:
    from tests.conftest import subprocess_env
    return {**subprocess_env(), **(extra or {})}


def _run_main(argv: Sequence[str]) -> None:
    if argv[0] == "-m":
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")


def in_process(argv: Sequence[str], call=None, env_extra: Optional[Dict[str, str]] = None
               ) -> subprocess.CompletedProcess:
    """Run ``python argv`` (or ``call()``, its main) here as its own process would: ``env_extra``
    in the environment, sys.argv set, stdout and stderr captured, SystemExit -> its code, an
    uncaught exception -> 1 with its traceback on stderr; one thread (OMP_NUM_THREADS=1, as a
    launched rank has). The working directory, environment, sys.argv and torch's thread count
    are restored after."""
    import torch
    argv = [str(a) for a in argv]
    env_extra = {THREADS_ENV: "1", **(env_extra or {})}
    saved_env = {k: os.environ.get(k) for k in env_extra}
    cwd, threads, old_argv = os.getcwd(), torch.get_num_threads(), sys.argv
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.update(env_extra)
        torch.set_num_threads(1)
        os.chdir(REPO)
        sys.argv = argv[1:] if argv[0] == "-m" else list(argv)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                call() if call is not None else _run_main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(cwd)
        torch.set_num_threads(threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def command(*argv, env_extra: Optional[Dict[str, str]] = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """``python *argv`` (in this process unless MEGATRON_VIST2_TEST_FRESH_LAUNCH=1)."""
    argv = [str(a) for a in argv]
    if fresh():
        return subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(env_extra), capture_output=True,
                              text=True, timeout=timeout)
    return in_process(argv, env_extra=env_extra)


def batch(commands: Sequence[Sequence[str]], timeout: float = 900) -> List[subprocess.CompletedProcess]:
    """Each of ``commands`` (``python`` argument lists) in one fresh interpreter, in order."""
    commands = [[str(a) for a in c] for c in commands]
    if fresh():
        return [subprocess.run([sys.executable, *c], cwd=REPO, env=_env(), capture_output=True, text=True,
                               timeout=timeout) for c in commands]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "commands.json"
        spec.write_text(json.dumps(commands))
        proc = subprocess.run([sys.executable, "-m", "tests.commands", str(spec)], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=timeout)
        results = Path(tmp) / "results.json"
        assert proc.returncode == 0 and results.exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
        return [subprocess.CompletedProcess(c, r["code"], r["stdout"], r["stderr"])
                for c, r in zip(commands, json.loads(results.read_text()))]


def _batch_main(spec: str) -> None:
    commands = json.loads(Path(spec).read_text())
    results = []
    for argv in commands:
        proc = in_process(argv)
        results.append({"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})
    Path(spec).with_name("results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _batch_main(sys.argv[1])
