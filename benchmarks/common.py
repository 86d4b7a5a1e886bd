"""Shared by the benchmark scripts: the machine line and paper-config chunks of real text."""
import datetime
import os
import platform

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{datetime.date.today()} | {cpu} | {os.cpu_count()} cores | Python "
            f"{platform.python_version()}")


def paper_chunks(tokenizer_path: str, L: int, count: int):
    """``count`` consecutive chunks of L tokens of the bundled corpus, detokenized."""
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    out = []
    for _, text in iter_documents("sotu"):
        ids = np.asarray(tok.encode(text))
        out += [tok.decode(ids[i:i + L]) for i in range(0, len(ids) - L + 1, L)]
        if len(out) >= count:
            return out[:count]
    return out


def layout_run_args(default_steps: int, layouts):
    """--steps and --only (layout names) for the benchmarks that train one layout after another;
    -> (args, the selected layouts: tuples whose first item is the name). Prints the machine."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=default_steps)
    ap.add_argument("--only", nargs="*", help=f"layout names to run (default: all), e.g. '{layouts[-1][0]}'")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    return args, [x for x in layouts if not args.only or x[0] in args.only]


def run_training(ranks: int, trainer_args, extra_env=None):
    """Train through the real entry point (one process, or torchrun + launch.sh) with the
    trainer's arguments, logging to a temporary directory -> (returncode, stderr, metrics rows)."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from megatron_vist2.parallel.distributed import free_port
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra_env or {})
    launcher = [sys.executable, "-m", "megatron_vist2.train"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
        "--master_port", str(free_port()), "--no-python", "./launch.sh"]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([*launcher, *trainer_args, f"logging.dir={out}", f"checkpoint.save_dir={out}/ckpt"],
                              cwd=repo, env=env, capture_output=True, text=True)
        log = Path(out) / "metrics.jsonl"
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return proc.returncode, proc.stderr, rows
