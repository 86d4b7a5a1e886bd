"""VIST2 for transformers (trust_remote_code), written by megatron_vist2's exporter
(tools/convert_checkpoint.py --vist2): a SigLIP-shaped ViT reads each finished text chunk rendered
as an image, a k x k merge + tanh aligner turns its patches into m visual tokens, and a Qwen3
backbone (transformers' own Qwen3ForCausalLM) reads visual tokens of finished chunks and the text
of the current one.

- ``forward`` takes a packed layout (token ids, chunk images, and per token: document, chunk,
  kind, read-back flag, compressed position) and applies the VIST2 attention rule.
- ``generate`` (greedy) keeps the context compressed: after every L text tokens the finished
  chunk is detokenized, rendered (bundled renderer and font), encoded, and from then on only its
  m visual tokens are attended (its text is evicted); the next chunk's first token is predicted
  from the last visual token. Each step recomputes the compressed context (no KV cache): simple,
  exact, and the same tokens as megatron_vist2's engine.
"""
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel, Qwen3ForCausalLM
from transformers.modeling_outputs import CausalLMOutput

from .configuration_vist2 import Vist2Config
from .vist2_renderer import Renderer

TEXT, VISUAL, PAD = 0, 1, -1


# ---------------------------------------------------------------- vision tower (SigLIP names)
class _Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        n, p, d = x.shape
        q, k, v = (f(x).view(n, p, self.heads, -1).transpose(1, 2) for f in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, p, d))


class _MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _Layer(nn.Module):
    def __init__(self, v):
        super().__init__()
        d = v["hidden_size"]
        self.layer_norm1 = nn.LayerNorm(d, eps=v["layernorm_eps"])
        self.self_attn = _Attention(d, v["num_heads"])
        self.layer_norm2 = nn.LayerNorm(d, eps=v["layernorm_eps"])
        self.mlp = _MLP(d, v["ffn_hidden_size"])

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, v, patches):
        super().__init__()
        self.patch_embedding = nn.Conv2d(v["num_channels"], v["hidden_size"], v["patch_size"], stride=v["patch_size"])
        self.position_embedding = nn.Embedding(patches, v["hidden_size"])


class _Encoder(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(v) for _ in range(v["num_layers"]))


class Vist2VisionTower(nn.Module):
    """uint8 grayscale renders [n, H, W] -> patch features [n, patches, d] (row-major grid)."""

    def __init__(self, config: Vist2Config):
        super().__init__()
        v, c = config.vision, config.chunk
        self.channels = v["num_channels"]
        self.grid = (c["image_height"] // v["patch_size"], c["image_width"] // v["patch_size"])
        self.embeddings = _Embeddings(v, self.grid[0] * self.grid[1])
        self.encoder = _Encoder(v)
        self.post_layernorm = nn.LayerNorm(v["hidden_size"], eps=v["layernorm_eps"])

    def forward(self, images):
        x = images.to(self.post_layernorm.weight.dtype) / 127.5 - 1.0      # SigLIP's [-1, 1]
        x = self.embeddings.patch_embedding(x[:, None].expand(-1, self.channels, -1, -1))
        x = x.flatten(2).transpose(1, 2) + self.embeddings.position_embedding.weight
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class Vist2Aligner(nn.Module):
    def __init__(self, config: Vist2Config, grid):
        super().__init__()
        self.k, self.grid = config.aligner_merge, grid
        d, D = config.vision["hidden_size"], config.text_config.hidden_size
        self.proj = nn.Linear(d * self.k * self.k, D)

    def forward(self, patches):
        k, (gh, gw) = self.k, self.grid
        n, _, d = patches.shape
        x = patches.reshape(n, gh // k, k, gw // k, k, d).permute(0, 1, 3, 2, 4, 5)
        return torch.tanh(self.proj(x.reshape(n, (gh // k) * (gw // k), k * k * d)))


def vist2_mask(doc, chunk, kind, readback):
    """The VIST2 attention rule, bool [batch, 1, seq, seq] (True = may attend): text sees its own
    chunk's text causally and the visual tokens of earlier chunks (and of its own in read-back
    mode); visual tokens see visual tokens of chunks up to their own; never across documents; a
    padding query sees only itself."""
    s = doc.shape[1]
    q, k = torch.arange(s)[:, None], torch.arange(s)[None, :]
    qd, kd, qc, kc = doc[:, :, None], doc[:, None, :], chunk[:, :, None], chunk[:, None, :]
    qt, kt = kind[:, :, None] == TEXT, kind[:, None, :] == TEXT
    qv, kv = kind[:, :, None] == VISUAL, kind[:, None, :] == VISUAL
    text_text = kt & (kc == qc) & (k <= q)
    text_image = kv & ((kc < qc) | (readback[:, :, None] & (kc == qc)))
    same = (qd == kd) & (qd >= 0)
    allowed = same & ((qt & (text_text | text_image)) | (qv & kv & (kc <= qc)))
    return (allowed | ((qd < 0) & (q == k)))[:, None]


class Vist2ForCausalLM(PreTrainedModel):
    config_class = Vist2Config
    base_model_prefix = "vist2"
    _no_split_modules = ["_Layer"]

    def __init__(self, config: Vist2Config):
        super().__init__(config)
        self.vision_tower = Vist2VisionTower(config)
        self.aligner = Vist2Aligner(config, self.vision_tower.grid)
        self.language_model = Qwen3ForCausalLM(config.text_config)
        self.L, self.m = config.chunk["text_tokens"], config.visual_tokens_per_chunk
        self._renderer = self._tokenizer = None
        self.post_init()

    def _init_weights(self, module):
        pass                                  # weights always come from the exported files

    # ------------------------------------------------------------ pieces
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, H, W] -> visual tokens [n, m, hidden]."""
        return self.aligner(self.vision_tower(images))

    def _assets(self):
        if self._renderer is None:
            where = Path(self.config._name_or_path)
            render = dict(self.config.render)
            render["font"] = str(where / render["font"])          # the bundled font file
            c = self.config.chunk
            self._renderer = Renderer(SimpleNamespace(**render), c["image_height"], c["image_width"])
            if (where / self.config.tokenizer_file).is_file():
                import sentencepiece as spm
                sp = spm.SentencePieceProcessor(model_file=str(where / self.config.tokenizer_file))
                self._tokenizer = lambda ids: sp.DecodeIds([int(i) for i in ids])
            else:
                from transformers import AutoTokenizer
                tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
                self._tokenizer = lambda ids: tok.decode([int(i) for i in ids], skip_special_tokens=False,
                                                         clean_up_tokenization_spaces=False)
        return self._renderer, self._tokenizer

    def render(self, chunk_ids: List[List[int]]) -> torch.Tensor:
        """Token ids of finished chunks -> their images, uint8 [n, H, W]."""
        renderer, decode = self._assets()
        return torch.from_numpy(np.stack([renderer.render(decode(ids)) for ids in chunk_ids]))

    # ------------------------------------------------------------ forward over a packed layout
    def forward(self, input_ids, images=None, kind=None, position_ids=None, doc=None, chunk=None,
                readback=None, **kwargs) -> CausalLMOutput:
        """``input_ids`` [B, S] (0 at visual and padding positions); without ``kind`` a plain
        causal text forward. With it: ``images`` uint8 [n, H, W] fill the VISUAL positions in
        row-major order (m per image); ``doc``, ``chunk``, ``readback``, ``position_ids`` as in
        megatron_vist2's TokenLayout."""
        if kind is None:
            return CausalLMOutput(logits=self.language_model(input_ids=input_ids, position_ids=position_ids).logits)
        embeds = self.language_model.get_input_embeddings()(input_ids.clamp(min=0))
        visual = kind == VISUAL
        if images is not None and images.shape[0]:
            vis = self.encode_images(images).to(embeds.dtype)
            embeds = embeds.masked_scatter(visual[..., None], vis)
        mask = vist2_mask(doc, chunk, kind, readback.bool())
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)
        return CausalLMOutput(logits=out.logits)

    # ------------------------------------------------------------ compressed generation
    def next_token_logits(self, ids: List[int]) -> torch.Tensor:
        """Logits for the token after ``ids`` with the context compressed: every finished chunk
        as its m visual tokens (positions [j m, (j+1) m)), the current chunk as text (positions
        from j m). A chunk just finished predicts from its last visual token."""
        L, m = self.L, self.m
        full = len(ids) // L
        tail = ids[full * L:]
        n = full * m + len(tail)
        kind = torch.tensor([VISUAL] * (full * m) + [TEXT] * len(tail))[None]
        chunk = torch.tensor([j for j in range(full) for _ in range(m)] + [full] * len(tail))[None]
        position = torch.tensor(list(range(full * m)) + [full * m + t for t in range(len(tail))])[None]
        tokens = torch.tensor([0] * (full * m) + list(tail))[None]
        images = self.render([ids[j * L:(j + 1) * L] for j in range(full)]) if full else None
        out = self.forward(tokens, images=images, kind=kind, position_ids=position,
                           doc=torch.zeros(1, n, dtype=torch.long), chunk=chunk,
                           readback=torch.zeros(1, n, dtype=torch.bool))
        return out.logits[0, -1]

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int = 32, eos_token_id: Optional[int] = None,
                 do_sample: bool = False, **kwargs) -> torch.Tensor:
        """Greedy decoding with the compressed context -> [1, prompt + new] token ids."""
        if do_sample:
            raise NotImplementedError("this exported VIST2 model decodes greedily (do_sample=False)")
        ids = [int(t) for t in torch.as_tensor(input_ids).reshape(-1)]
        for _ in range(max_new_tokens):
            nxt = int(self.next_token_logits(ids).argmax())
            ids.append(nxt)
            if eos_token_id is not None and nxt == eos_token_id:
                break
        return torch.tensor([ids])
