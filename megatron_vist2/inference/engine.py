"""Incremental generation with global context compression, and the full-KV baseline, on our
model (megatron-core layers, any tensor-parallel size).

The schedule (which tokens run as text, when a chunk is rendered, encoded and prefilled as m
visual tokens, what is evicted) is inference/decoder.py's, and where keys go and which ones each
query reads is inference/cache.py's: the exported model's ``generate`` runs the same two files.
Modes: VIST2 (``compress=True``, running compression), the baseline (``compress=False``: every
token as text, a full text cache, the prompt in one forward on SDPA's causal kernel; the text
control's own mode) and the window control's (the current chunk only).

Consistency law (tested): the logits equal the teacher-forced training forward under the VIST2
mask. Sequences of a batch may be at different chunk phases.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from megatron.core import tensor_parallel

from ..config import Config
from ..data.renderer import Renderer
from ..errors import UserError
from ..cost.flops import forward_flops
from ..models.vist2 import Vist2Model
from ..parallel.compat import plain_linears
from .cache import KVCache, Plan
from .decoder import ChunkedDecoder


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


class Vist2Engine(ChunkedDecoder):
    def __init__(self, model: Vist2Model, tokenizer, cfg: Config, compress: Optional[bool] = None,
                 max_context: int = 4096, batch_size: int = 1, dtype: Optional[torch.dtype] = None,
                 device=None, prefill_block: int = 256):
        """``dtype`` / ``device`` of the KV cache: default the model's (its first parameter's).
        ``prefill_block``: tokens per prefill forward (256 was the fastest of 16-512 for the
        attention of 2,048 visual tokens on the CPU, docs/performance.md)."""
        mode = engine_mode(cfg.model.context, compress)
        if max_context <= 0:
            raise InferenceError(f"max_context must be > 0, got {max_context}")
        if model.front.sequence_parallel:
            raise InferenceError("the engine needs a model built without sequence parallelism "
                                 "(set parallel.sequence_parallel=false; the weights are the same)")
        weight = next(model.parameters())
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg
        self.compress = mode == "vist2"
        self.max_context = max_context
        self.device = torch.device(device) if device is not None else weight.device
        mcfg = cfg.model
        L, m = mcfg.chunk.text_tokens, mcfg.visual_tokens_per_chunk
        self.renderer = Renderer.from_model_config(mcfg)
        llm = mcfg.llm
        visual_slots, text_slots = (-(-max_context // L) * m, L) if self.compress else \
            (0, L if mode == "window" else max_context)
        cache = KVCache(llm.num_layers, batch_size, llm.num_kv_heads // cfg.parallel.tensor_parallel,
                        llm.head_dim, visual_slots, text_slots, dtype or weight.dtype, self.device, m)
        super().__init__(mode, L, m, cache, prefill_block)
        self.layers = list(model.layers.values())
        self.vocab = tokenizer.vocab_size
        self._flop_rates(cfg)
        self.stats = Stats()

    # ------------------------------------------------------------------ cost accounting
    def _flop_rates(self, cfg: Config) -> None:
        f = forward_flops(cfg)
        self.llm_flops_per_token = f.llm_linear_per_token
        self.attn_flops_per_key = f.llm_attention_per_key
        self.vision_flops_per_image = f.vision_per_image
        self.aligner_flops_per_image = f.aligner_per_image

    def _count(self, plan: Plan) -> None:
        self.stats.flops["llm_linear"] += plan.queries * self.llm_flops_per_token
        self.stats.flops["llm_attention"] += plan.pairs * self.attn_flops_per_key

    # ------------------------------------------------------------------ the forwards (decoder.py's hooks)
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with plain_linears():
            logits = self.model.head(hidden, self.model.front.embedding.weight if self.model.tied else None)
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return logits[..., :self.vocab].float()

    def _run(self, plan: Plan, hidden: torch.Tensor, last_only: bool) -> torch.Tensor:
        """hidden [q, rows, H] through every layer with the cache. ``last_only``: the last layer
        computes the output of the last position only (-> [1, rows, H]), unmasked (the last
        query reads every key of the plan); the other positions' K/V are still kept."""
        rope = self.model.rotary(plan.positions)
        n = len(self.layers)
        with plain_linears():
            for i, layer in enumerate(self.layers):
                last = last_only and i == n - 1
                hidden = layer(hidden, rope, None if last else plan.mask, self.cache.layer(i, plan),
                               slice(hidden.shape[0] - 1, None) if last else None)
        return hidden

    def run_text(self, plan: Plan, tokens: torch.Tensor, last_only: bool) -> torch.Tensor:
        hidden = self.model.front.embedding(tokens).transpose(0, 1)
        out = self._run(plan, hidden, last_only)
        self._count(plan)
        return self._logits(out.transpose(0, 1))

    def run_visual(self, plan: Plan, images: torch.Tensor, last_only: bool) -> torch.Tensor:
        with plain_linears():
            vis = self.model.front.encode_images(images.to(self.device))      # [k, m, H]
        k, m = vis.shape[0], self.m
        out = self._run(plan, vis.reshape(k * m, 1, -1).to(self.cache.k.dtype), last_only)
        self._count(plan)
        self.stats.flops["vision"] += k * self.vision_flops_per_image
        self.stats.flops["aligner"] += k * self.aligner_flops_per_image
        self.stats.chunks_compressed += k
        return self._logits(out[-1:, 0] if last_only else out[m - 1::m, 0])

    def render(self, chunk_ids: List[List[int]]) -> torch.Tensor:
        t0 = time.perf_counter()
        images = torch.from_numpy(
            np.stack([self.renderer.render_chunk(ids, self.tokenizer.decode) for ids in chunk_ids]))
        self.stats.render_seconds += time.perf_counter() - t0
        return images

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Start one sequence per row from token-id prompts -> next-token logits [B, V]."""
        if len(prompts) != self.batch:
            raise InferenceError(f"{len(prompts)} prompts for an engine built for batch {self.batch}")
        self.reset()
        out = []
        for row, prompt in enumerate(prompts):
            out.append(self.prefill_logits(row, [int(t) for t in prompt], last_only=True)[-1])
        return torch.stack(out)

    @torch.no_grad()
    def prefill_logits(self, row: int, prompt: List[int], last_only: bool = False) -> torch.Tensor:
        """Prefill one (empty) row; logits [n, V] for every position that predicts a next token:
        VIST2: the last visual token of each full chunk, then each tail token; baseline: each token
        (``last_only``: only the last row is wanted; the baseline computes it alone, VIST2 the
        last chunk of each visual tile and the last token of the tail)."""
        if not prompt:
            raise InferenceError(f"prompt {row} is empty: give at least one token of text")
        if len(prompt) > self.max_context:
            raise InferenceError(f"prompt {row} has {len(prompt)} tokens, more than the engine's "
                                 f"max_context {self.max_context}: shorten it or raise max_context")
        try:
            return self.prefill_row(row, list(prompt), last_only)
        except ValueError as exc:
            raise InferenceError(str(exc)) from None

    @torch.no_grad()
    def step(self, tokens, active=None) -> torch.Tensor:
        """Append one token per row (``active`` rows only; tensors or lists) -> next-token
        logits [B, V]."""
        tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else [int(t) for t in tokens]
        on = [True] * self.batch if active is None else \
            (active.tolist() if isinstance(active, torch.Tensor) else [bool(a) for a in active])
        for b in range(self.batch):
            if on[b] and self.length[b] >= self.max_context:
                raise InferenceError(f"sequence {b} reached max_context {self.max_context}")
        return super().step(tokens, on)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: Optional[Callable[[int, int], None]] = None) -> List[List[int]]:
        generator = torch.Generator().manual_seed(params.seed)
        logits = self.prefill(prompts)
        out: List[List[int]] = [[] for _ in prompts]
        done = [False] * self.batch
        stops = set(int(t) for t in params.stop_tokens)
        for _ in range(params.max_new_tokens):
            tokens = sample(logits, params, generator).tolist()
            for b in range(self.batch):
                if done[b]:
                    continue
                out[b].append(tokens[b])
                if on_token is not None:
                    on_token(b, tokens[b])
                if tokens[b] in stops or len(out[b]) >= params.max_new_tokens or \
                        self.length[b] + 1 >= self.max_context:
                    done[b] = True
            if all(done):
                break
            logits = self.step(tokens, [not d for d in done])
        return out
