"""Data of the local lm-evaluation-harness tasks: the jsonl files beside this file (written by
tools/make_lm_eval_data.py), found relative to this file so the tasks run from any
directory, offline."""
import json
from pathlib import Path

import datasets


def _load(name: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (Path(__file__).parent / name).read_text().splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def lastword(**kwargs) -> datasets.DatasetDict:
    return _load("vist2_lastword.jsonl")


def perplexity(**kwargs) -> datasets.DatasetDict:
    return _load("vist2_perplexity.jsonl")
