"""The decoding schedule: which tokens run as text, when a chunk is compressed, what is evicted.
The one definition, used by the engine (inference/engine.py) and by the exported model's
``generate`` (bundled verbatim as vist2_decoder.py by convert/bundle.py: it imports torch and the
cache only). Subclasses run the forwards (``run_text``, ``run_visual``, ``render``).

Modes (the engine's ``mode``):
  - 'vist2': a prompt's full chunks are rendered, encoded and prefilled as visual tokens, in tiles
    of ``prefill_block`` tokens (each tile reads the visual prefix before it and itself); the
    unfinished tail runs as text of the current chunk. During decoding a token that does not
    finish its chunk runs as text; a token that finishes it does not run as text at all: the
    chunk is detokenized, rendered, encoded and prefilled as m visual tokens over its own text,
    whose keys are evicted, and the next token's logits come from the last visual token, as
    training predicts a chunk's first token from V_j.
  - 'full': every token as text at position t, the whole context cached (the baseline and the
    text control); a prompt is one forward on the causal kernel.
  - 'window' (the no-history control): the current chunk's text only, at positions 0..L-1; the
    token that finishes a chunk runs as text (its logits predict the next chunk's first token
    from that chunk alone) and the next token evicts the chunk.
Rows of a batch may sit at different chunk phases; rows that sit out a step write to the scratch
slot (cache.py).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .cache import KVCache, Plan


class ChunkedDecoder:
    def __init__(self, mode: str, L: int, m: int, cache: KVCache, prefill_block: int):
        if mode not in ("vist2", "full", "window"):
            raise ValueError(f"unknown decoding mode '{mode}' (expected vist2, full or window)")
        self.mode, self.L, self.m, self.cache = mode, L, m, cache
        # Tokens per prefill forward (a tile of visual tokens, or of the text tail): bounds the
        # mask memory; smaller tiles skip more of the block-causal triangle, larger ones batch the
        # matmuls better.
        self.prefill_block = prefill_block
        self.batch = len(cache.text_len)
        self.chunk_tokens: List[List[int]] = [[] for _ in range(self.batch)]
        self.length = [0] * self.batch

    # ------------------------------------------------------------------ what a subclass runs
    def run_text(self, plan: Plan, tokens: torch.Tensor, last_only: bool) -> torch.Tensor:
        """tokens [rows, q] through the backbone with the cache -> logits [rows, q, V] (fp32);
        ``last_only``: [rows, 1, V], the last query's only (it reads every key of the plan)."""
        raise NotImplementedError

    def run_visual(self, plan: Plan, images: torch.Tensor, last_only: bool) -> torch.Tensor:
        """k chunk images (uint8 [k, H, W]) encoded and run as the plan's k m visual tokens ->
        logits [k, V] at the last visual token of each chunk (``last_only``: [1, V], the last)."""
        raise NotImplementedError

    def render(self, chunk_ids: List[List[int]]) -> torch.Tensor:
        """Token ids of finished chunks -> their images, uint8 [k, H, W]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the schedule
    def reset(self) -> None:
        """Forget every sequence (the cache memory stays allocated)."""
        self.cache.reset()
        self.chunk_tokens = [[] for _ in range(self.batch)]
        self.length = [0] * self.batch

    def text(self, rows: slice, tokens: torch.Tensor, active: Sequence[bool], last_only: bool = False):
        plan = self.cache.text_plan(rows, tokens.shape[1], active)
        logits = self.run_text(plan, tokens, last_only)
        self.cache.advance_text(plan, tokens.shape[1], active)
        return logits

    def compress_chunks(self, row: int, chunk_ids: List[List[int]], last_only: bool = False) -> torch.Tensor:
        """Render, encode and prefill finished chunks of one row, in tiles of ``prefill_block``
        tokens -> logits [chunks, V] at the last visual token of each (each predicts the next
        chunk's first token); ``last_only``: of the last chunk of each tile only."""
        images = self.render(chunk_ids)
        per = max(1, self.prefill_block // self.m)
        out = []
        for i in range(0, len(chunk_ids), per):
            tile = images[i:i + per]
            plan = self.cache.visual_plan(row, tile.shape[0] * self.m)
            out.append(self.run_visual(plan, tile, last_only))
            self.cache.advance_visual(row, tile.shape[0] * self.m)
        return torch.cat(out)

    def prefill_row(self, row: int, prompt: List[int], last_only: bool = False) -> torch.Tensor:
        """Prefill one empty row -> logits [n, V] for every position that predicts a next token:
        VIST2: the last visual token of each full chunk, then each tail token; full and window:
        each token. ``last_only``: the last row is the one wanted (computed alone where the
        kernels allow)."""
        if self.cache.text_len[row] or self.cache.visual_len[row]:
            raise ValueError(f"row {row} is not empty: reset() before prefilling it again")
        self.length[row] = len(prompt)
        one = [True]
        rows = slice(row, row + 1)
        device = self.cache.device

        def text(ids, whole=False):
            block = len(ids) if whole else self.prefill_block
            return [self.text(rows, torch.tensor([ids[i:i + block]], device=device), one,
                              last_only and i + block >= len(ids))[0]
                    for i in range(0, len(ids), block)]

        if self.mode == "full":                    # one forward on the causal kernel
            self.chunk_tokens[row] = list(prompt)
            return text(prompt, whole=True)[0]
        if self.mode == "window":                  # each chunk alone: evict before the next
            parts = []
            for i in range(0, len(prompt), self.L):
                self.cache.text_len[row] = 0
                parts += text(prompt[i:i + self.L])
            self.chunk_tokens[row] = list(prompt[(len(prompt) - 1) // self.L * self.L:])
            return torch.cat(parts)
        full = len(prompt) // self.L
        tail = prompt[full * self.L:]
        parts = [self.compress_chunks(row, [prompt[i * self.L:(i + 1) * self.L] for i in range(full)],
                               last_only)] if full else []
        parts += text(tail)
        self.chunk_tokens[row] = list(tail)
        return torch.cat(parts)

    def step(self, tokens: Sequence[int], active: Optional[Sequence[bool]] = None) -> torch.Tensor:
        """Append one token per row (``active`` rows only) -> next-token logits [B, V] (rows that
        sit out get zeros)."""
        B = self.batch
        tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else [int(t) for t in tokens]
        active = [True] * B if active is None else \
            (active.tolist() if isinstance(active, torch.Tensor) else [bool(a) for a in active])
        text_rows = list(active)
        finished = {}
        for b in range(B):
            if not active[b]:
                continue
            self.length[b] += 1
            if self.mode == "window" and len(self.chunk_tokens[b]) == self.L:
                self.cache.text_len[b] = 0                              # a new window
                self.chunk_tokens[b] = []
            self.chunk_tokens[b].append(tokens[b])
            if self.mode == "vist2" and len(self.chunk_tokens[b]) == self.L:   # finished: compress
                text_rows[b] = False
                finished[b] = self.compress_chunks(b, [self.chunk_tokens[b]], last_only=True)[-1]
                self.chunk_tokens[b] = []
        if any(text_rows):
            ids = torch.tensor(tokens, device=self.cache.device)[:, None]
            logits = self.text(slice(0, B), ids, text_rows)[:, -1]
            if not all(text_rows):
                logits = logits.masked_fill(~torch.tensor(text_rows, device=logits.device)[:, None], 0.0)
        else:
            logits = torch.zeros(B, next(iter(finished.values())).shape[-1], device=self.cache.device)
        for b, row_logits in finished.items():
            logits[b] = row_logits
        return logits
