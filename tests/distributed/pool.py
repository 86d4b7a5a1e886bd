"""The test session's rank pools: one torchrun launch per world size (2 or 4 gloo ranks) for the
whole session, which then runs every multi-rank job the tests hand it (a training run through the
entry point, or a worker script) one after another, in the already started ranks (the way
Megatron runs a bucket of distributed tests in one launch). A launch costs each rank its
interpreter and the torch / DeepSpeed / megatron imports: paid once instead of per run.

``run(world, kind, ...)`` returns what ``subprocess.run(torchrun ...)`` returned (returncode,
stdout and stderr of every rank, rank order), so a test reads the same output either way.

Exceptions, each to a fresh launch (``launch_fresh``): a job that kills a rank (fault injection
``kill-...``), and any job after the pool died. A pool whose ranks hold more than ``MAX_THREADS``
threads or ``MAX_FILES`` open files after a job (what finished jobs leave behind) is closed, and
the next job starts a new one. A job that fails on one rank while another waits
in a collective is given ``GRACE_S`` seconds, then the pool is torn down (the next job starts a new
one). Set ``MEGATRON_VIST2_TEST_FRESH_LAUNCH=1`` to run every job in its own launch (the old way,
for comparison or when a pool is suspected).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from megatron_vist2.parallel.distributed import free_port
from tests.commands import fresh
from tests.conftest import FAST_TIER_ENV, REPO, subprocess_env

GRACE_S = 60
# A rank's threads and open files after a job, above which the pool is replaced before the next
# job: a finished job's DeepSpeed engine, optimizer and process groups are not all freed (each
# dp2-zero3 job left about 9 threads and 13 files per rank after pool_worker's teardown; without
# that teardown a session's pool reached 2,300 threads and 3,400 files per rank and its later jobs
# failed). A fresh launch costs each rank its imports, about 10 s.
MAX_THREADS, MAX_FILES = 128, 384


def launch_fresh(world: int, kind: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """One torchrun launch of a training run (``kind`` 'train') or a script ('script': args[0] is
    the script)."""
    target = ["--no-python", "./launch.sh", *args] if kind == "train" else list(args)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
           "--master_port", str(free_port()), *target]
    return subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


class RankPool:
    def __init__(self, world: int):
        self.world = world
        self.dir = Path(tempfile.mkdtemp(prefix=f"rank_pool{world}_"))
        self.log = open(self.dir / "torchrun.log", "w")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--master_port", str(free_port()), "tests/distributed/pool_worker.py", str(self.dir)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.next = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, job: dict, timeout: float) -> subprocess.CompletedProcess:
        n = self.next
        self.next += 1
        tmp = self.dir / f"job_{n}.tmp"
        tmp.write_text(json.dumps(job))
        os.replace(tmp, self.dir / f"job_{n}.json")
        codes: Dict[int, int] = {}
        held: Dict[int, dict] = {}                 # each rank's threads and open files after the job
        deadline, first_failure = time.time() + timeout, None
        while len(codes) < self.world:
            for r in range(self.world):
                f = self.dir / f"job_{n}.rank_{r}.json"
                if r not in codes and f.exists():
                    done = json.loads(f.read_text())
                    codes[r] = done["code"]
                    held[r] = done
                    if codes[r] != 0 and first_failure is None:
                        first_failure = time.time()
            if len(codes) == self.world:
                break
            if not self.alive() or time.time() > deadline or \
                    (first_failure is not None and time.time() > first_failure + GRACE_S):
                self.stop()
                codes.setdefault(-1, 1)                     # a rank never finished: a failed launch
                break
            time.sleep(0.05)

        def read(r, ext):
            f = self.dir / f"job_{n}.rank_{r}.{ext}"
            return f.read_text(errors="replace") if f.exists() else ""
        stdout = "".join(read(r, "out") for r in range(self.world))
        stderr = "".join(read(r, "err") for r in range(self.world))
        if -1 in codes:
            log = (self.dir / "torchrun.log").read_text(errors="replace")[-6000:]
            stderr += f"\n[rank pool] job {n} did not finish on every rank within its time; the pool's log:\n{log}\n"
        code = next((c for c in codes.values() if c != 0), 0)
        if any(r.get("threads", 0) > MAX_THREADS or r.get("files", 0) > MAX_FILES
               for r in held.values()):
            self.close()                                   # the next job starts a fresh pool
        return subprocess.CompletedProcess(job, code, stdout, stderr)

    def stop(self) -> None:
        """Kill the ranks (the directory stays until ``close``: the outputs are still read)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)       # torchrun and its ranks
            self.proc.wait()

    def close(self, kill: bool = False) -> None:
        if self.log.closed:
            return
        if self.alive() and not kill:
            (self.dir / f"job_{self.next}.tmp").write_text(json.dumps({"kind": "exit", "env": {}}))
            os.replace(self.dir / f"job_{self.next}.tmp", self.dir / f"job_{self.next}.json")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill = True
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_pools: Dict[int, RankPool] = {}


def run(world: int, kind: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a job on ``world`` ranks in the session's pool (started on first use)."""
    env = dict(env or {})
    if os.environ.get(FAST_TIER_ENV):
        raise AssertionError(f"{os.environ[FAST_TIER_ENV]} runs a rank-pool job but is not marked slow "
                             f"(tests/conftest.py, the slow tier)")
    if fresh() or "kill-" in env.get("MEGATRON_VIST2_FAULT", ""):
        return launch_fresh(world, kind, args, env, timeout)
    pool = _pools.get(world)
    if pool is None or not pool.alive():
        if pool is not None:
            pool.close()
        pool = _pools[world] = RankPool(world)
    job = {"kind": kind, "env": env, "args": list(args)} if kind == "train" else \
        {"kind": kind, "env": env, "path": args[0], "args": list(args[1:])}
    return pool.submit(job, timeout)


@atexit.register
def close_all() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()
