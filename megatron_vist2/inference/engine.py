"""Incremental generation with global context compression, and the full-KV baseline.

VIST2 (``compress=True``), per sequence: the cache holds the visual K/V of finished chunks and the
text K/V of the current chunk.
  - prefill: the prompt's full chunks are rendered, encoded and prefilled as visual tokens
    (positions [j m, (j+1) m)) in tiles of ``prefill_block`` tokens, each against the visual
    prefix only; the unfinished tail is prefilled as text of the current chunk.
  - decode: a token that does not finish the chunk runs as text (position j m + t). A token that
    finishes it is not run as text at all: the chunk is detokenized, rendered, encoded and
    prefilled as m visual tokens, its text K/V is evicted, and the next token's logits come from
    the last visual token, exactly as training predicts a chunk's first token from V_{j}.
Baseline (``compress=False``): the same backbone with every token as text at position t and a
full text cache; its prefill is one forward on SDPA's causal kernel (no mask tensor), its decode
the VIST2 text path. It is the text control's own mode (``model.context: text``).
Window (the no-history control, ``model.context: window``): the cache holds the current chunk's
text only, at positions 0..L-1; the token that finishes a chunk runs as text (its logits predict
the next chunk's first token from that chunk alone) and the next token evicts the chunk.

Consistency law (tested): the logits equal the teacher-forced training forward under the VIST2
mask. Sequences of a batch may be at different chunk phases; rows that sit out a step write to a
scratch slot that nothing attends to.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from megatron.core import tensor_parallel

from ..config import Config
from ..data.renderer import Renderer
from ..errors import UserError
from ..models.attention import CAUSAL
from ..cost.flops import forward_flops
from ..models.vist2 import Vist2Model
from .cache import KVCache


class InferenceError(UserError):
    """Bad input to the engine (empty or over-long prompt, ...)."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0           # 0 = greedy
    top_p: float = 1.0
    stop_tokens: Sequence[int] = ()
    seed: int = 0


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] (fp32) -> token ids [B]."""
    if params.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p       # smallest set reaching top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class Stats:
    """What the engine did, for the efficiency report."""
    flops: Counter = field(default_factory=Counter)    # llm_linear, llm_attention, vision, aligner
    render_seconds: float = 0.0
    chunks_compressed: int = 0


MODES = {"vist2": "vist2", "text": "full", "window": "window"}   # model.context -> its own mode


def engine_mode(context: str, compress: Optional[bool]) -> str:
    """'vist2' (running compression), 'full' (every token as text) or 'window' (the current chunk
    only). ``compress``: None = the mode the model was trained for; False = 'full' (the backbone
    on plain text, any model); True = 'vist2', which needs the VIST2 model's vision encoder."""
    if compress is None:
        return MODES[context]
    if compress and context != "vist2":
        raise InferenceError(f"a model.context '{context}' model has no vision encoder, so it cannot "
                             f"compress: use its own mode (compress=None) or the full text cache "
                             f"(compress=False, --baseline)")
    return "vist2" if compress else "full"


class Vist2Engine:
    def __init__(self, model: Vist2Model, tokenizer, cfg: Config, compress: Optional[bool] = None,
                 max_context: int = 4096, batch_size: int = 1, dtype: torch.dtype = torch.float32,
                 device="cpu", prefill_block: int = 256):
        self.mode = engine_mode(cfg.model.context, compress)
        compress = self.mode == "vist2"
        if max_context <= 0:
            raise InferenceError(f"max_context must be > 0, got {max_context}")
        if model.front.sequence_parallel:
            raise InferenceError("the engine needs a model built without sequence parallelism "
                                 "(set parallel.sequence_parallel=false; the weights are the same)")
        self.model, self.tokenizer, self.cfg, self.compress = model.eval(), tokenizer, cfg, compress
        self.max_context, self.batch, self.device = max_context, batch_size, torch.device(device)
        # Tokens per prefill forward (a tile of visual tokens, or of the text tail): bounds the
        # mask memory; smaller tiles skip more of the block-causal triangle, larger ones batch the
        # matmuls better (256 was the fastest of 16-512 for the attention of 2,048 visual tokens
        # on the CPU, docs/performance.md).
        self.prefill_block = prefill_block
        mcfg = cfg.model
        self.L, self.m = mcfg.chunk.text_tokens, mcfg.visual_tokens_per_chunk
        self.renderer = Renderer.from_model_config(mcfg)
        tp = cfg.parallel.tensor_parallel
        llm = mcfg.llm
        chunks = -(-max_context // self.L)
        visual_slots, text_slots = (chunks * self.m, self.L) if compress else \
            (0, self.L if self.mode == "window" else max_context)
        self.cache = KVCache(llm.num_layers, batch_size, llm.num_kv_heads // tp, llm.head_dim,
                             visual_slots, text_slots, dtype, self.device)
        self.vocab = tokenizer.vocab_size
        self._flop_rates(cfg)
        self.stats = Stats()
        self.chunk_tokens: List[List[int]] = [[] for _ in range(batch_size)]
        self.length = [0] * batch_size

    # ------------------------------------------------------------------ cost accounting
    def _flop_rates(self, cfg: Config) -> None:
        f = forward_flops(cfg)
        self.llm_flops_per_token = f.llm_linear_per_token
        self.attn_flops_per_key = f.llm_attention_per_key
        self.vision_flops_per_image = f.vision_per_image
        self.aligner_flops_per_image = f.aligner_per_image

    # ------------------------------------------------------------------ forward pieces
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.head(hidden, self.model.front.embedding.weight if self.model.tied else None)
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return logits[..., :self.vocab].float()

    def _run(self, rows: slice, hidden: torch.Tensor, positions: torch.Tensor,
             slots: Union[torch.Tensor, slice], mask, visible: Optional[int] = None,
             last_only: bool = False) -> torch.Tensor:
        """hidden [q, nb, H] through every layer with the cache; positions [nb, q]; slots [nb, q]
        or one slice for every row; ``visible``: attend to the first ``visible`` slots only (see
        KVCache.layer). ``last_only``: the last layer computes the output of the last position
        only (-> [1, nb, H]), unmasked: for callers whose last query sees every visible key (the
        causal prefill; a visual tile, whose last token is in its last chunk); the other
        positions' last-layer outputs feed nothing, their K/V are kept."""
        if last_only and visible is None:
            raise ValueError("last_only needs ``visible``: the keys the last query sees")
        rope = self.model.rotary(positions)
        layers = list(self.model.layers.values())
        for i, layer in enumerate(layers):
            last = last_only and i == len(layers) - 1
            hidden = layer(hidden, rope, None if last else mask, self.cache.layer(i, rows, slots, visible),
                           slice(hidden.shape[0] - 1, None) if last else None)
        return hidden

    def _causal_prefill(self, row: int, ids: List[int], last_only: bool) -> torch.Tensor:
        """Baseline prefill of an empty row: the whole prompt in one forward on SDPA's causal
        kernel (slots and positions 0..n-1, no mask tensor) -> logits [n or 1, V]. ``last_only``:
        the last layer runs attention and MLP for the last position alone."""
        n = len(ids)
        if int(self.cache.text_len[row]) or int(self.cache.visual_len[row]):
            raise InferenceError(f"row {row} is not empty: call reset() before prefilling it again")
        positions = torch.arange(n, device=self.device)[None]
        hidden = self.model.front.embedding(torch.tensor([ids], device=self.device)).transpose(0, 1)
        out = self._run(slice(row, row + 1), hidden, positions, slice(0, n), CAUSAL, visible=n,
                        last_only=last_only)
        self.cache.text_len[row] = n
        self.stats.flops["llm_linear"] += n * self.llm_flops_per_token
        self.stats.flops["llm_attention"] += self.attn_flops_per_key * n * (n + 1) // 2
        return self._logits(out[:, 0])

    def _text_forward(self, rows: slice, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """tokens [nb, q] as text of each row's current chunk -> logits [nb, q, V].
        Inactive rows write to the scratch slot and see only it."""
        c = self.cache
        nb, q = tokens.shape
        vis_len, txt_len = c.visual_len[rows], c.text_len[rows]
        offs = torch.arange(q, device=self.device)
        slots = torch.where(active[:, None], c.visual_slots + txt_len[:, None] + offs, c.scratch)
        chunk = vis_len // self.m
        positions = torch.where(active[:, None], chunk[:, None] * self.m + txt_len[:, None] + offs, 0)
        s = torch.arange(c.slots, device=self.device)[None, None, :]
        qpos = (txt_len[:, None] + offs)[:, :, None]                        # text index of each query
        visible = (s < vis_len[:, None, None]) | \
                  ((s >= c.visual_slots) & (s - c.visual_slots <= qpos) & (s < c.scratch))
        mask = torch.where(active[:, None, None], visible, s == c.scratch)[:, None]
        hidden = self.model.front.embedding(tokens).transpose(0, 1)
        out = self._run(rows, hidden, positions, slots, mask)
        c.text_len[rows] += active.long() * q
        n_active = int(active.sum())
        self.stats.flops["llm_linear"] += n_active * q * self.llm_flops_per_token
        self.stats.flops["llm_attention"] += self.attn_flops_per_key * int(
            (visible[:, :, :] & active[:, None, None]).sum())
        return self._logits(out.transpose(0, 1))

    def _visual_forward(self, row: int, chunk_ids: List[List[int]], last_only: bool = False) -> torch.Tensor:
        """Render, encode and prefill finished chunks of one row -> logits [chunks, V] at the
        last visual token of each (each predicts the next chunk's first token); ``last_only``:
        at the last chunk of each tile only (the last row is the last chunk's)."""
        t0 = time.perf_counter()
        images = torch.from_numpy(
            np.stack([self.renderer.render_chunk(ids, self.tokenizer.decode) for ids in chunk_ids]))
        self.stats.render_seconds += time.perf_counter() - t0
        per = max(1, self.prefill_block // self.m)
        return torch.cat([self._visual_tile(row, images[i:i + per], last_only)
                          for i in range(0, len(chunk_ids), per)])

    def _visual_tile(self, row: int, images: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Encode k chunk images and prefill their k m visual tokens after the row's visual ones.
        The queries see only the visual prefix (keys [0, v0 + k m): nothing after it, and no text
        slot, is ever visible to a visual token), so the mask is [k m, v0 + k m] and the earlier
        tiles' keys are all visible: tile by tile, attention costs the block-causal triangle plus
        one diagonal tile, not a square over every cache slot."""
        c, m = self.cache, self.m
        vis = self.model.front.encode_images(images.to(self.device))          # [k, m, H]
        k = vis.shape[0]
        q = k * m
        v0 = int(c.visual_len[row])
        positions = (v0 + torch.arange(q, device=self.device))[None]         # chunk j: [j m, (j+1) m)
        s = torch.arange(v0 + q, device=self.device)[None, :]
        mask = (s // m <= positions[0, :, None] // m)[None, None]            # visual sees visual <= own chunk
        hidden = vis.reshape(q, 1, -1).to(c.k.dtype)
        out = self._run(slice(row, row + 1), hidden, positions, slice(v0, v0 + q), mask, visible=v0 + q,
                        last_only=last_only)
        c.visual_len[row] += q
        self.stats.flops["vision"] += k * self.vision_flops_per_image
        self.stats.flops["aligner"] += k * self.aligner_flops_per_image
        self.stats.flops["llm_linear"] += q * self.llm_flops_per_token
        self.stats.flops["llm_attention"] += self.attn_flops_per_key * int(mask.sum())
        self.stats.chunks_compressed += k
        return self._logits(out[-1:, 0] if last_only else out[m - 1::m, 0])

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Start one sequence per row from token-id prompts -> next-token logits [B, V]."""
        if len(prompts) != self.batch:
            raise InferenceError(f"{len(prompts)} prompts for an engine built for batch {self.batch}")
        self.reset()
        out = []
        for row, prompt in enumerate(prompts):
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise InferenceError(f"prompt {row} is empty: give at least one token of text")
            if len(prompt) > self.max_context:
                raise InferenceError(f"prompt {row} has {len(prompt)} tokens, more than the engine's "
                                     f"max_context {self.max_context}: shorten it or raise max_context")
            out.append(self.prefill_logits(row, prompt, last_only=True)[-1])
        return torch.stack(out)

    def reset(self) -> None:
        """Forget every sequence (the cache memory stays allocated)."""
        self.cache.visual_len.zero_()
        self.cache.text_len.zero_()
        self.chunk_tokens = [[] for _ in range(self.batch)]
        self.length = [0] * self.batch

    def prefill_logits(self, row: int, prompt: List[int], last_only: bool = False) -> torch.Tensor:
        """Prefill one (empty) row; logits [n, V] for every position that predicts a next token:
        VIST2: the last visual token of each full chunk, then each tail token; baseline: each token
        (``last_only``: only the last row is wanted; the baseline computes it alone, VIST2 the
        last chunk of each visual tile and the tail)."""
        rows = slice(row, row + 1)
        active = torch.ones(1, dtype=torch.bool, device=self.device)
        self.length[row] = len(prompt)

        def text(ids):
            return [self._text_forward(rows, torch.tensor([ids[i:i + self.prefill_block]],
                                                          device=self.device), active)[0]
                    for i in range(0, len(ids), self.prefill_block)]

        if self.mode == "full":
            self.chunk_tokens[row] = prompt
            return self._causal_prefill(row, prompt, last_only)
        if self.mode == "window":                  # each chunk alone: evict before the next
            parts = []
            for i in range(0, len(prompt), self.L):
                self.cache.text_len[row] = 0
                parts += text(prompt[i:i + self.L])
            self.chunk_tokens[row] = prompt[(len(prompt) - 1) // self.L * self.L:]
            return torch.cat(parts)
        full = len(prompt) // self.L
        chunks = [prompt[i * self.L:(i + 1) * self.L] for i in range(full)]
        parts = [self._visual_forward(row, chunks, last_only)] if full else []
        tail = prompt[full * self.L:]
        parts += text(tail)
        self.chunk_tokens[row] = list(tail)
        return torch.cat(parts)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append one token per row (``active`` rows only) -> next-token logits [B, V]."""
        B = self.batch
        active = torch.ones(B, dtype=torch.bool, device=self.device) if active is None else active.to(self.device)
        logits = torch.zeros(B, self.vocab, device=self.device)
        text_rows = active.clone()
        for b in range(B):
            if not active[b]:
                continue
            if self.length[b] >= self.max_context:
                raise InferenceError(f"sequence {b} reached max_context {self.max_context}")
            self.length[b] += 1
            if self.mode == "window" and len(self.chunk_tokens[b]) == self.L:
                self.cache.text_len[b] = 0                                  # a new window
                self.chunk_tokens[b] = []
            self.chunk_tokens[b].append(int(tokens[b]))
            if self.compress and len(self.chunk_tokens[b]) == self.L:      # chunk finished: compress
                text_rows[b] = False
                logits[b] = self._visual_forward(b, [self.chunk_tokens[b]], last_only=True)[-1]
                self.cache.text_len[b] = 0                                  # evict its text K/V
                self.chunk_tokens[b] = []
        if text_rows.any():
            step_logits = self._text_forward(slice(0, B), tokens.to(self.device)[:, None], text_rows)[:, 0]
            logits[text_rows] = step_logits[text_rows]
        return logits

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: Optional[Callable[[int, int], None]] = None) -> List[List[int]]:
        generator = torch.Generator().manual_seed(params.seed)
        logits = self.prefill(prompts)
        out: List[List[int]] = [[] for _ in prompts]
        done = torch.zeros(self.batch, dtype=torch.bool)
        stops = set(int(t) for t in params.stop_tokens)
        for _ in range(params.max_new_tokens):
            tokens = sample(logits, params, generator).cpu()
            for b in range(self.batch):
                if done[b]:
                    continue
                out[b].append(int(tokens[b]))
                if on_token is not None:
                    on_token(b, int(tokens[b]))
                if int(tokens[b]) in stops or len(out[b]) >= params.max_new_tokens or \
                        self.length[b] + 1 >= self.max_context:
                    done[b] = True
            if bool(done.all()):
                break
            logits = self.step(tokens, ~done)
        return out
