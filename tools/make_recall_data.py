#!/usr/bin/env python3
"""Make the recall-rich source (megatron_vist2/data/recall.py) from a tokenized corpus: every
document states passages in its first chunks and restates them word for word in its later chunks,
so that history is worth clearly more than its error to the text control (docs/evaluation.md).

    python tools/make_recall_data.py --source data/sotu --output-prefix data/recall --preset tiny-cpu

Reads <source>_train and <source>_valid (tools/preprocess_data.py) and writes
<output-prefix>_train and _valid with the same tokenizer. A document is one row's whole history
for the preset (``--preset`` and overrides: data.seq_length, model.chunk, visual tokens, no
read-back), so evaluation rows never split one; its facts are its first F = ceil(chunks / 3) chunks,
and every later chunk c repeats chunk c - F. Train on a
blend, e.g. data.train_prefix="0.5 data/sotu_train 0.5 data/recall_train", and evaluate on
data/recall_valid.
"""
import argparse
import math

from megatron_vist2.errors import UserError, run_cli


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="data/sotu", help="prefix of the tokenized corpus (<source>_train/_valid)")
    ap.add_argument("--output-prefix", default="data/recall")
    ap.add_argument("--tokenizer", default="", help="the corpus's tokenizer (default: the one its manifest names)")
    ap.add_argument("--preset", default="tiny-cpu", help="preset or YAML whose row length sizes the documents")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.seq_length=544")
    args = ap.parse_args(argv)
    from megatron_vist2.config import load_config
    from megatron_vist2.data.indexed import open_indexed, read_manifest, write_indexed
    from megatron_vist2.data.packing import max_chunks_per_segment
    from megatron_vist2.data.recall import recall_documents
    from megatron_vist2.data.tokenizer import load_tokenizer
    cfg = load_config(args.preset, args.overrides)
    m = cfg.model
    L = m.chunk.text_tokens
    chunks = max_chunks_per_segment(cfg.data.seq_length, L, m.visual_tokens_per_chunk, False)
    if chunks < 2:
        raise UserError(f"a row of data.seq_length {cfg.data.seq_length} holds {chunks} chunk of {L} tokens: "
                        f"history needs at least 2; raise data.seq_length")
    doc_tokens, facts = chunks * L, math.ceil(chunks / 3)
    tokenizer = load_tokenizer(args.tokenizer or read_manifest(f"{args.source}_train")["tokenizer"])
    for split in ("train", "valid"):
        src = open_indexed(f"{args.source}_{split}", tokenizer)
        if int((src.lengths // doc_tokens).sum()) == 0:
            raise UserError(f"{args.source}_{split} has no document of {doc_tokens} tokens or more: "
                            f"nothing to make recall documents from (lower data.seq_length)")
        stats = {}
        extra = {"recall": {"source": f"{args.source}_{split}", "source_sha256": src.manifest["sha256"],
                            "chunks": chunks, "text_tokens": L, "facts_chunks": facts}}
        out = f"{args.output_prefix}_{split}"
        write_indexed(out, recall_documents(src, chunks, L, facts, stats), tokenizer,
                      extra=lambda: {**extra, "recall": {**extra["recall"], **stats}})
        print(f"wrote {out}.bin/.idx/.json: {stats['documents']} documents of {doc_tokens} tokens "
              f"({chunks} chunks of {L}; the first {facts} state the facts), {stats['copied_tokens'] / stats['tokens']:.1%} "
              f"of the tokens restate them")


if __name__ == "__main__":
    run_cli(main)
