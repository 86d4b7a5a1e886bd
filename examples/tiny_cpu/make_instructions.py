#!/usr/bin/env python3
"""Instruction data for the tiny stage-2 demo, from the bundled corpus (no download): the prompt
is the opening paragraphs of an address (long: most of it is read as compressed history), the
response is the paragraph that follows; the loss covers the response only.

    python examples/tiny_cpu/make_instructions.py data/sotu_instructions.jsonl
"""
import json
import sys
from pathlib import Path

from megatron_vist2.data.corpus import iter_documents


def main(out: str) -> None:
    rows = 0
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        for name, text in iter_documents("sotu"):
            paras = [p.strip() for p in text.split("\n") if len(p.strip()) > 200]
            for i in range(3, len(paras), 4):
                prompt = f"Continue the address ({name}).\n\n" + "\n".join(paras[i - 3:i])
                fh.write(json.dumps({"prompt": prompt, "response": paras[i]}) + "\n")
                rows += 1
    Path(out + ".tmp").replace(out)
    print(f"wrote {out}: {rows} prompt/response pairs")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/sotu_instructions.jsonl")
