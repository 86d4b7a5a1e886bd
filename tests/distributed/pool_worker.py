"""A rank of the test session's rank pool (tests/distributed/pool.py): started once by torchrun,
it joins the gloo process group, then runs the jobs the pytest process writes into the pool
directory one after another, each as its command line would run in a fresh launch:

- ``train``: ``python -m megatron_vist2.train ARGS`` (``megatron_vist2.train.main`` in this process);
- ``script``: ``python PATH ARGS`` (a test worker such as parity_worker.py, run with runpy).

Per job: the job's environment variables set (and restored after), stdout and stderr (file
descriptors, so C-level and logging output too) written to ``job_N.rank_R.out`` / ``.err``, the
exit code written last to ``job_N.rank_R.json``. Between jobs megatron's model-parallel groups are
torn down (each job sets up its own layout, as a fresh process would); the process group stays.
"""
import json
import os
import runpy
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def run_job(job: dict) -> int:
    old_argv = sys.argv
    try:
        if job["kind"] == "train":
            from megatron_vist2 import train
            from megatron_vist2.errors import run_cli
            sys.argv = ["megatron_vist2.train", *job["args"]]
            run_cli(lambda: train.main(list(job["args"])))
        else:
            sys.argv = [job["path"], *job["args"]]
            runpy.run_path(job["path"], run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:                                   # what an uncaught exception would print
        traceback.print_exc()
        return 1
    finally:
        sys.argv = old_argv


def reset_between_jobs() -> None:
    """Tear down what a job set up, as the end of its process would: megatron's model-parallel
    state, then every process group but the pool's own (megatron's, DeepSpeed's). A gloo group
    keeps three threads and a socket per peer until it is destroyed: without this a session's
    pool grew past 2,000 threads and 3,000 open files per rank and failed its later jobs."""
    import gc
    from megatron.core import parallel_state
    from megatron_vist2.parallel.compat import destroy_groups_but_world
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    destroy_groups_but_world()
    gc.collect()


def resources() -> dict:
    """This rank's threads and open files (the pool's health, checked by tests/distributed/pool.py)."""
    return {"threads": len(os.listdir("/proc/self/task")), "files": len(os.listdir("/proc/self/fd"))}


def main(pool_dir: str) -> None:
    root = Path(pool_dir)
    dist.init_process_group("gloo", timeout=timedelta(minutes=15))
    rank = dist.get_rank()
    cwd, threads = os.getcwd(), torch.get_num_threads()
    n = 0
    while True:
        job_file = root / f"job_{n}.json"
        while not job_file.exists():
            time.sleep(0.02)
        job = json.loads(job_file.read_text())
        if job["kind"] == "exit":
            break
        saved_env = {k: os.environ.get(k) for k in job["env"]}
        os.environ.update(job["env"])
        sys.stdout.flush()
        sys.stderr.flush()
        fds = os.dup(1), os.dup(2)
        with open(root / f"job_{n}.rank_{rank}.out", "w") as out, open(root / f"job_{n}.rank_{rank}.err", "w") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                code = run_job(job)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                for fd in fds:
                    os.close(fd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(cwd)
        torch.set_num_threads(threads)
        reset_between_jobs()
        _write_json(root / f"job_{n}.rank_{rank}.json", {"code": code, **resources()})
        n += 1
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
