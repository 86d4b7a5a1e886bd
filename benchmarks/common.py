"""Shared by the benchmark scripts: the machine line and paper-config chunks of real text."""
import datetime
import os
import platform

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{datetime.date.today()} | {cpu} | {os.cpu_count()} cores | Python "
            f"{platform.python_version()}")


def paper_chunks(tokenizer_path: str, L: int, count: int):
    """``count`` consecutive chunks of L tokens of the bundled corpus, detokenized."""
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    out = []
    for _, text in iter_documents("sotu"):
        ids = np.asarray(tok.encode(text))
        out += [tok.decode(ids[i:i + L]) for i in range(0, len(ids) - L + 1, L)]
        if len(out) >= count:
            return out[:count]
    return out
