"""Retrieval from compressed history: a pass key placed at a chosen depth of a long held-out
context and asked for at the end, answered by greedy generation through the inference engine
(running compression with eviction: what a user of the engine gets).

One trial: ``filler_before + NEEDLE + filler_after + QUESTION`` of exactly ``context`` tokens,
where ``filler_after`` has ``depth`` tokens (how far back the key lies before the question) and
the fillers are consecutive held-out text. Exact match: the generated tokens are the key's.
Every model evaluated gets the same prompts (they depend on the seed, the context and the depth
only), each through the engine in its own mode, so ``side_by_side`` can put the model's accuracy
next to the text control's (which keeps the whole context) and the window control's (which keeps
only the current chunk) at every depth.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..errors import UserError

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


class RetrievalError(UserError):
    """Retrieval settings the held-out data or the context cannot satisfy."""


def held_out_stream(indexed, need: int) -> np.ndarray:
    """The held-out documents' tokens end to end, at least ``need`` of them."""
    parts, have = [], 0
    for d in range(len(indexed)):
        parts.append(np.asarray(indexed.tokens(d), np.int64))
        have += len(parts[-1])
        if have >= need:
            return np.concatenate(parts)[:need]
    raise RetrievalError(f"the held-out set has {have} tokens, fewer than the {need} the longest "
                         f"retrieval context needs: lower --retrieval-contexts")


def build_trials(tokenizer, stream: np.ndarray, context: int, depth: int, trials: int, seed: int):
    """-> [(prompt ids, key ids)], ``trials`` of them, each prompt ``context`` tokens long."""
    rng = np.random.default_rng([seed, context, depth])
    question = tokenizer.encode(QUESTION)
    out = []
    for t in range(trials):
        key = str(int(rng.integers(10_000, 100_000)))
        needle = tokenizer.encode(NEEDLE.format(key=key))
        before = context - len(needle) - depth - len(question)
        if depth < 0 or before < 0:
            raise RetrievalError(
                f"retrieval depth {depth} does not fit a context of {context} tokens (the key sentence "
                f"takes {len(needle)} and the question {len(question)}): use depths <= "
                f"{max(0, context - len(needle) - len(question))} or a longer --retrieval-contexts")
        offset = int(rng.integers(0, max(1, len(stream) - context)))
        filler = stream[offset:offset + before + depth].tolist()
        prompt = filler[:before] + needle + filler[before:] + question
        out.append((prompt, tokenizer.encode(" " + key)))
    return out


def check_depths(contexts: Sequence[int], depths: Sequence[int], tokenizer) -> None:
    """Fail before any model is loaded when a depth cannot fit its context."""
    for c in contexts:
        for d in depths:
            build_trials(tokenizer, np.zeros(c, np.int64), c, d, 1, 0)


def retrieval(engine_for, tokenizer, indexed, contexts: Sequence[int], depths: Sequence[int],
              trials: int, seed: int = 0) -> Dict:
    """Exact-match accuracy by context length and depth. ``engine_for(max_context)`` builds the
    inference engine (batch 1)."""
    from ..inference import SamplingParams
    stream = held_out_stream(indexed, max(contexts) + 1)
    cells: List[Dict] = []
    for context in contexts:
        for depth in depths:
            hits = 0
            cases = build_trials(tokenizer, stream, context, depth, trials, seed)
            engine = engine_for(context + max(len(k) for _, k in cases) + 1)
            for prompt, key in cases:
                out = engine.generate([prompt], SamplingParams(max_new_tokens=len(key)))[0]
                hits += int(out == key)
            cells.append({"context": context, "depth": depth, "trials": trials, "accuracy": hits / trials})
    total = sum(c["accuracy"] * c["trials"] for c in cells) / max(1, sum(c["trials"] for c in cells))
    return {"accuracy": total, "cells": cells}


def side_by_side(by_role: Dict[str, Dict]) -> Dict:
    """``retrieval`` results of several models on the same prompts (role -> result; "model"
    first) -> the model's result with, in every cell and overall, each role's accuracy under
    ``by_model``."""
    roles = list(by_role)
    first = by_role[roles[0]]
    cells = [{**cell, "by_model": {r: by_role[r]["cells"][i]["accuracy"] for r in roles}}
             for i, cell in enumerate(first["cells"])]
    return {**first, "cells": cells, "by_model": {r: by_role[r]["accuracy"] for r in roles}}
