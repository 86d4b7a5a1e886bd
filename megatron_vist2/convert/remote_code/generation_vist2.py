"""Cached generation with running compression for the exported VIST2 model (trust_remote_code),
written by megatron_vist2's exporter next to modeling_vist2.py.

Why not transformers' own ``GenerationMixin.generate`` with a ``Cache`` subclass: its loop feeds
one new token per step at the next position and grows the cache by one entry. VIST2 breaks all
three: the token that finishes a chunk is not run as text at all (the chunk is rendered, encoded
and run as m visual tokens), its chunk's text entries are then evicted, and positions restart at
the chunk's visual block (compressed RoPE positions). So the schedule and the cache are
megatron_vist2's own, bundled from its source (vist2_decoder.py = inference/decoder.py,
vist2_kv_cache.py = inference/cache.py: the same code as its engine), and this file adds the
forwards through transformers' Qwen3 and a short loop that follows transformers' conventions
(``GenerationConfig``, ``max_new_tokens``/``max_length``, greedy or temperature/top-k/top-p
sampling through transformers' own logits warpers, ``eos_token_id``, ``stop_strings``, padded
batches via ``attention_mask``, streamers).
"""
import copy
import inspect
from typing import List, Optional

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from .vist2_decoder import ChunkedDecoder
from .vist2_kv_cache import KVCache, max_position


class Vist2Cache(KVCache):
    """The engine's cache (vist2_kv_cache.py), also serving as Qwen3's cache object: ``update``
    stores the new K/V of the forward in progress (``plan``) and returns the keys it reads."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layer(layer_idx).store(key_states, value_states)

    def get_seq_length(self, layer_idx=0):   # asked by transformers only when no positions are given
        return 0


def check_sampling(gc: GenerationConfig) -> None:
    """Out-of-range or unsupported options -> ValueError naming the option."""
    if gc.num_beams not in (None, 1):
        raise ValueError(f"num_beams={gc.num_beams}: the VIST2 model decodes one hypothesis per row "
                         f"(greedy or sampling); set num_beams=1")
    if gc.num_return_sequences not in (None, 1):
        raise ValueError(f"num_return_sequences={gc.num_return_sequences} is not supported; repeat "
                         f"the prompt in the batch instead")
    if gc.do_sample:
        if gc.temperature is not None and not gc.temperature > 0:
            raise ValueError(f"temperature={gc.temperature}: must be > 0 when do_sample=True "
                             f"(use do_sample=False for greedy decoding)")
        if gc.top_k is not None and (int(gc.top_k) != gc.top_k or gc.top_k < 0):
            raise ValueError(f"top_k={gc.top_k}: must be an integer >= 0 (0 = no top-k filter)")
        if gc.top_p is not None and not 0 < gc.top_p <= 1:
            raise ValueError(f"top_p={gc.top_p}: must be in (0, 1]")
    for name in ("repetition_penalty",):
        value = getattr(gc, name, None)
        if value not in (None, 1.0):
            raise ValueError(f"{name}={value} is not supported by the VIST2 model's generate")


def warpers(gc: GenerationConfig) -> LogitsProcessorList:
    """transformers' own sampling warpers, in transformers' order: temperature, top-k, top-p."""
    out = LogitsProcessorList()
    if not gc.do_sample:
        return out
    if gc.temperature is not None and gc.temperature != 1.0:
        out.append(TemperatureLogitsWarper(gc.temperature))
    if gc.top_k:
        out.append(TopKLogitsWarper(int(gc.top_k)))
    if gc.top_p is not None and gc.top_p < 1.0:
        out.append(TopPLogitsWarper(gc.top_p))
    return out


class Vist2Generator(ChunkedDecoder):
    """One generate call: the engine's schedule (vist2_decoder.py) with Qwen3 as the backbone."""

    def __init__(self, model, batch: int, max_tokens: int, prefill_block: int = 256):
        self.model = model
        tc = model.config.text_config
        p = model.language_model.get_input_embeddings().weight
        self.device, self.dtype = p.device, p.dtype
        L, m = model.L, model.m
        cache = Vist2Cache(tc.num_hidden_layers, batch, tc.num_key_value_heads,
                           getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
                           -(-max_tokens // L) * m, L, self.dtype, self.device, m)
        super().__init__("vist2", L, m, cache, prefill_block)
        # the cache's keyword: ``cache`` from transformers 5.2x, ``past_key_values`` before (an
        # unknown keyword would be swallowed by **kwargs, and Qwen3 would make its own cache)
        params = inspect.signature(type(model.language_model.model).forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _backbone(self, plan, embeds, last_only: bool):
        """Embeddings [rows, q, D] through Qwen3 with the cache -> logits (fp32)."""
        self.cache.plan = plan
        # transformers' SDPA path sets is_causal itself when it gets no mask and several queries:
        # right for the causal kernel (CAUSAL), so several queries reading every key need a mask
        mask = None if isinstance(plan.mask, str) else plan.mask
        q = embeds.shape[1]
        if plan.mask is None and q > 1:
            mask = torch.ones(embeds.shape[0], 1, q, plan.keys, dtype=torch.bool, device=self.device)
        out = self.model.language_model.model(inputs_embeds=embeds, position_ids=plan.positions,
                                              attention_mask={"full_attention": mask},
                                              use_cache=True, **{self.cache_kwarg: self.cache})
        hidden = out.last_hidden_state
        return self.model.language_model.lm_head(hidden[:, -1:] if last_only else hidden).float()

    def run_text(self, plan, tokens, last_only):
        return self._backbone(plan, self.model.language_model.get_input_embeddings()(tokens), last_only)

    def run_visual(self, plan, images, last_only):
        vis = self.model.encode_images(images.to(self.device))                  # [k, m, D]
        k, m = vis.shape[0], self.m
        logits = self._backbone(plan, vis.reshape(1, k * m, -1).to(self.dtype), last_only)[0]
        return logits[-1:] if last_only else logits[m - 1::m]

    def render(self, chunk_ids: List[List[int]]):
        return self.model.render(chunk_ids)


def prepare_config(model, generation_config: Optional[GenerationConfig], kwargs: dict) -> GenerationConfig:
    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unused = gc.update(**kwargs)
    if unused:
        raise TypeError(f"generate() got arguments the VIST2 model does not use: {sorted(unused)}")
    check_sampling(gc)
    return gc


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, generation_config=None, streamer=None,
             seed: Optional[int] = None, **kwargs):
    """See modeling_vist2.Vist2ForCausalLM.generate."""
    for ignored in ("tokenizer", "use_cache"):       # transformers callers pass these; not needed
        kwargs.pop(ignored, None)
    gc = prepare_config(model, generation_config, kwargs)
    input_ids = torch.as_tensor(input_ids, device=input_ids.device if isinstance(input_ids, torch.Tensor) else "cpu")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, S = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    prompts = [[int(t) for t, keep in zip(input_ids[b], attention_mask[b]) if keep] for b in range(B)]
    for b, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {b} is empty (its attention_mask has no 1): give at least one token")
    new = gc.max_new_tokens if gc.max_new_tokens is not None else gc.max_length - S
    if new <= 0:
        raise ValueError(f"max_length={gc.max_length} leaves no room after the {S}-token input: "
                         f"raise max_length or set max_new_tokens")
    L, m, limit = model.L, model.m, model.config.text_config.max_position_embeddings
    for b, p in enumerate(prompts):
        if max_position(len(p), L, m) >= limit:
            raise ValueError(f"prompt {b} has {len(p)} tokens, which needs RoPE position "
                             f"{max_position(len(p), L, m)}; the model has max_position_embeddings "
                             f"{limit}: shorten the prompt")
    longest = max(len(p) for p in prompts) + new
    if max_position(longest, L, m) >= limit:
        raise ValueError(f"{max(len(p) for p in prompts)} prompt tokens + {new} new tokens need RoPE "
                         f"position {max_position(longest, L, m)}; the model has max_position_embeddings "
                         f"{limit}: lower max_new_tokens/max_length")
    eos = gc.eos_token_id
    eos = set() if eos is None else set([eos] if isinstance(eos, int) else eos)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (min(eos) if eos else 0)
    stops = [gc.stop_strings] if isinstance(gc.stop_strings, str) else list(gc.stop_strings or [])
    decode = model.decode if stops else None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    process = warpers(gc)

    g = Vist2Generator(model, B, longest)
    logits = torch.stack([g.prefill_row(b, p, last_only=True)[-1] for b, p in enumerate(prompts)])
    if streamer is not None:
        streamer.put(input_ids.cpu())
    out: List[List[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device="cpu")            # host-side bookkeeping
    for i in range(new):
        scores = process(None, logits[..., :model.tokenizer_vocab_size])   # never padding rows
        if gc.do_sample:
            probs = torch.softmax(scores, dim=-1).cpu()
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            tokens = scores.argmax(-1).cpu()
        tokens = torch.where(done, torch.full_like(tokens, pad), tokens)
        for b in range(B):
            if done[b]:
                continue
            out[b].append(int(tokens[b]))
            if int(tokens[b]) in eos or (stops and any(s in decode(out[b]) for s in stops)):
                done[b] = True
        if streamer is not None:
            streamer.put(tokens)
        if bool(done.all()) or i == new - 1:
            break
        logits = g.step(tokens.tolist(), (~done).tolist())
    if streamer is not None:
        streamer.end()
    n = max(len(o) for o in out)
    tail = torch.tensor([o + [pad] * (n - len(o)) for o in out], dtype=input_ids.dtype, device="cpu").reshape(B, n)
    model.last_cache_bytes = g.cache.nbytes
    sequences = torch.cat([input_ids.cpu(), tail], dim=1)
    if gc.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
