#!/usr/bin/env python3
"""Tokenize a corpus into indexed datasets <prefix>_train / _valid / _test (.bin/.idx/.json),
split by document, with a pool of worker processes.

    python tools/preprocess_data.py --corpus sotu --tokenizer data/tokenizer/sotu.model \
        --output-prefix data/sotu --split 95,5,0 --workers 2
    python tools/preprocess_data.py --instruction chats.jsonl --tokenizer ... --output-prefix data/sft
"""
import argparse

from megatron_vist2.data.corpus import iter_conversations, iter_documents
from megatron_vist2.data.preprocess import preprocess
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="sotu", help="'sotu' (bundled), a folder of .txt, or a .jsonl with \"text\"")
    src.add_argument("--instruction", help="a .jsonl of {\"prompt\", \"response\"}: stored with a response mask")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model or Hugging Face tokenizer dir")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--split", default="95,5,0", help="train,valid,test weights (by document)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    items = list(iter_conversations(args.instruction) if args.instruction else iter_documents(args.corpus))
    if len(items) < 2:
        ap.error(f"the corpus has {len(items)} document(s); a split needs at least 2")
    out = preprocess(items, args.tokenizer, args.output_prefix, args.split, args.workers, args.seed)
    stats = out.pop("_stats")
    for split, m in out.items():
        extra = f", {m['num_response_tokens']} response tokens" if m["response_mask"] else ""
        print(f"wrote {args.output_prefix}_{split}.bin/.idx/.json: {m['num_documents']} documents, "
              f"{m['num_tokens']} tokens ({m['dtype']}{extra})")
    print(f"done: {stats['bytes'] / 1e6:.1f} MB of text in {stats['seconds']:.1f}s")


if __name__ == "__main__":
    run_cli(main)
