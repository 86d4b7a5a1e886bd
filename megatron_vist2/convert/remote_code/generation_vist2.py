"""Cached generation with running compression for the exported VIST2 model (trust_remote_code),
written by megatron_vist2's exporter next to modeling_vist2.py.

Why not transformers' own ``GenerationMixin.generate`` with a ``Cache`` subclass: its loop feeds
one new token per step at the next position and grows the cache by one entry. VIST2 breaks all
three: the token that finishes a chunk is not run as text at all (the chunk is rendered, encoded
and run as m visual tokens), its chunk's text entries are then evicted, and positions restart at
the chunk's visual block (compressed RoPE positions). So this file keeps the smallest correct
thing: a preallocated per-row cache (``Vist2Cache``, the one object Qwen3's attention writes
through ``update``) and a short loop that follows transformers' conventions (``GenerationConfig``,
``max_new_tokens``/``max_length``, greedy or temperature/top-k/top-p sampling through
transformers' own logits warpers, ``eos_token_id``, ``stop_strings``, padded batches via
``attention_mask``, streamers). It is the same algorithm as megatron_vist2's
``inference/engine.py`` (rows at different chunk phases in one batch; rows that sit out a step
write to a scratch slot nothing attends to) and gives its tokens (tested).
"""
import copy
from typing import List, Optional

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from .vist2_kv_cache import KVCache


class Vist2Cache(KVCache):
    """megatron_vist2's engine cache (inference/cache.py, bundled as vist2_kv_cache.py): per layer
    [batch, kv_heads, slots, head_dim]; per row ``[0, V)`` visual tokens of finished chunks,
    ``[V, V + L)`` text of the current chunk, one scratch slot; eviction resets ``text_len``.
    Here it also serves as Qwen3's cache object: ``update`` writes at ``write_slots``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.rows, self.write_slots = slice(0, self.k.shape[1]), None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Qwen3Attention's hook: store the new K/V of ``rows`` at ``write_slots`` [rows, q] and
        return every slot of those rows (the attention mask says which count)."""
        return self.layer(layer_idx, self.rows, self.write_slots).store(key_states, value_states)

    def get_seq_length(self, layer_idx=0):   # asked by transformers only when no positions are given
        return 0


def max_position(n_tokens: int, L: int, m: int) -> int:
    """The largest RoPE position a sequence of ``n_tokens`` uses (compressed positions)."""
    full, tail = divmod(n_tokens, L)
    return full * m - 1 if tail == 0 else full * m + tail - 1


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


class Vist2Generator:
    """One generate call: the cache, each row's current-chunk tokens, and the three forwards."""

    def __init__(self, model, batch: int, max_tokens: int):
        self.model, self.L, self.m = model, model.L, model.m
        lm = model.language_model
        tc = model.config.text_config
        p = lm.get_input_embeddings().weight
        self.device, self.dtype = p.device, p.dtype
        chunks = max_tokens // self.L
        self.cache = Vist2Cache(tc.num_hidden_layers, batch, tc.num_key_value_heads,
                                getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
                                chunks * self.m, self.L, self.dtype, self.device)
        self.chunk_tokens: List[List[int]] = [[] for _ in range(batch)]

    def _run(self, rows: slice, embeds, positions, slots, mask, last_only: bool):
        """Embeddings [nb, q, D] through the backbone with the cache -> logits (fp32)."""
        self.cache.rows, self.cache.write_slots = rows, slots
        out = self.model.language_model.model(inputs_embeds=embeds, position_ids=positions,
                                              attention_mask={"full_attention": mask},
                                              cache=self.cache, use_cache=True)
        hidden = out.last_hidden_state
        return self.model.language_model.lm_head(hidden[:, -1:] if last_only else hidden).float()

    def text(self, rows: slice, tokens: torch.Tensor, active: torch.Tensor, last_only=True):
        """tokens [nb, q] as text of each row's current chunk (inactive rows: scratch slot)."""
        c = self.cache
        q = tokens.shape[1]
        vis_len, txt_len = c.visual_len[rows], c.text_len[rows]
        offs = torch.arange(q, device=self.device)
        slots = torch.where(active[:, None], c.visual_slots + txt_len[:, None] + offs, c.scratch)
        positions = torch.where(active[:, None], (vis_len // self.m)[:, None] * self.m + txt_len[:, None] + offs, 0)
        s = torch.arange(c.slots, device=self.device)[None, None, :]
        qpos = (txt_len[:, None] + offs)[:, :, None]
        visible = (s < vis_len[:, None, None]) | \
                  ((s >= c.visual_slots) & (s - c.visual_slots <= qpos) & (s < c.scratch))
        mask = torch.where(active[:, None, None], visible, s == c.scratch)[:, None]
        embeds = self.model.language_model.get_input_embeddings()(tokens)
        logits = self._run(rows, embeds, positions, slots, mask, last_only)
        c.text_len[rows] += active.long() * q
        return logits[:, -1]

    def visual(self, row: int, chunk_ids: List[List[int]]):
        """Render, encode and prefill finished chunks of one row -> logits [V] at the last
        visual token (it predicts the next chunk's first token)."""
        c, m = self.cache, self.m
        vis = self.model.encode_images(self.model.render(chunk_ids).to(self.device))   # [k, m, D]
        q = vis.shape[0] * m
        v0 = int(c.visual_len[row])
        slots = (v0 + torch.arange(q, device=self.device))[None]
        s = torch.arange(c.slots, device=self.device)[None, :]
        mask = ((s < v0 + q) & (s // m <= (slots[0] // m)[:, None]))[None, None]   # visual sees visual <= own chunk
        logits = self._run(slice(row, row + 1), vis.reshape(1, q, -1).to(self.dtype), slots, slots, mask, True)
        c.visual_len[row] += q
        return logits[0, -1]

    def prefill(self, row: int, prompt: List[int], block: int = 1024):
        """Full chunks as images, the unfinished tail as text -> next-token logits [V]."""
        L = self.L
        full = len(prompt) // L
        chunks = [prompt[i * L:(i + 1) * L] for i in range(full)]
        group = max(1, block // self.m)
        logits = None
        for i in range(0, full, group):
            logits = self.visual(row, chunks[i:i + group])
        tail = prompt[full * L:]
        active = torch.ones(1, dtype=torch.bool, device=self.device)
        for i in range(0, len(tail), block):
            logits = self.text(slice(row, row + 1), torch.tensor([tail[i:i + block]], device=self.device), active)[0]
        self.chunk_tokens[row] = list(tail)
        return logits

    def step(self, tokens: torch.Tensor, active: torch.Tensor):
        """Append one token per active row -> next-token logits [B, V]; a token that finishes
        its chunk compresses it (render, encode, prefill m visual tokens, evict its text)."""
        B = tokens.shape[0]
        logits = None
        text_rows = active.clone()
        finished = {}
        for b in range(B):
            if not active[b]:
                continue
            self.chunk_tokens[b].append(int(tokens[b]))
            if len(self.chunk_tokens[b]) == self.L:
                text_rows[b] = False
                finished[b] = self.visual(b, [self.chunk_tokens[b]])
                self.cache.text_len[b] = 0                       # evict the chunk's text K/V
                self.chunk_tokens[b] = []
        if text_rows.any():
            logits = self.text(slice(0, B), tokens.to(self.device)[:, None], text_rows)
        if logits is None:
            logits = torch.zeros(B, self.model.config.text_config.vocab_size, device=self.device)
        for b, row_logits in finished.items():
            logits[b] = row_logits
        return logits


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
    input_ids = torch.as_tensor(input_ids)
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
    logits = torch.stack([g.prefill(b, p) for b, p in enumerate(prompts)])
    if streamer is not None:
        streamer.put(input_ids.cpu())
    out: List[List[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
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
        logits = g.step(tokens, ~done)
    if streamer is not None:
        streamer.end()
    n = max(len(o) for o in out)
    tail = torch.tensor([o + [pad] * (n - len(o)) for o in out], dtype=input_ids.dtype).reshape(B, n)
    model.last_cache_bytes = g.cache.nbytes
    sequences = torch.cat([input_ids.cpu(), tail], dim=1)
    if gc.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
