#!/usr/bin/env python3
"""Preprocessing throughput with 1 and 2 workers (the bundled corpus, repeated --repeat times),
sentencepiece tokenizer; also checks that both runs wrote identical files.

    python benchmarks/preprocess.py [--repeat 4]
"""
import argparse
import tempfile
from pathlib import Path

from common import machine
from megatron_vist2.data.corpus import iter_documents
from megatron_vist2.data.preprocess import preprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    docs = list(iter_documents("sotu"))
    items = [(f"{r}:{name}", text) for r in range(args.repeat) for name, text in docs]
    print(f"machine: {machine()}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = preprocess(items, args.tokenizer, f"{tmp}/w{workers}", "95,5,0", workers, progress=False)
            s = out["_stats"]
            rates[workers] = s["bytes"] / 1e6 / s["seconds"]
            print(f"{workers} worker(s): {s['bytes'] / 1e6:.1f} MB in {s['seconds']:.2f}s = "
                  f"{rates[workers]:.1f} MB/s ({rates[workers] / workers:.1f} MB/s per core)")
        same = all(Path(f"{tmp}/w1_train{e}").read_bytes() == Path(f"{tmp}/w2_train{e}").read_bytes()
                   for e in (".bin", ".idx"))
    print(f"speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x; identical output: {same}")


if __name__ == "__main__":
    main()
