"""VIST2 for transformers (trust_remote_code), written by megatron_vist2's exporter
(tools/convert_checkpoint.py --vist2): a SigLIP-shaped ViT reads each finished text chunk rendered
as an image, a k x k merge + tanh aligner turns its patches into m visual tokens, and a Qwen3
backbone (transformers' own Qwen3ForCausalLM) reads visual tokens of finished chunks and the text
of the current one.

- ``forward`` takes a packed layout (token ids, chunk images, and per token: document, chunk,
  kind, read-back flag, compressed position) and applies the VIST2 attention rule.
- ``generate`` keeps the context compressed with a KV cache (generation_vist2.py): after every
  L text tokens the finished chunk is detokenized, rendered (bundled renderer and font), encoded
  and prefilled as its m visual tokens, and its text K/V is evicted; the next chunk's first token
  is predicted from the last visual token. Greedy or sampling, padded batches (rows at different
  chunk phases), the same tokens as megatron_vist2's engine.
- ``save_pretrained`` carries the font and tokenizer files along with the weights and code.
"""
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3ForCausalLM, SiglipVisionConfig
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .configuration_vist2 import Vist2Config
from .generation_vist2 import generate as cached_generate
from .vist2_attention import PAD, VISUAL, TokenLayout, dense_mask
from .vist2_kv_cache import max_position
from .vist2_packing import Segment, assemble_row
from .vist2_renderer import Renderer


class _Embeddings(nn.Module):
    def __init__(self, v, patches):
        super().__init__()
        self.patch_embedding = nn.Conv2d(v["num_channels"], v["hidden_size"], v["patch_size"], stride=v["patch_size"])
        self.position_embedding = nn.Embedding(patches, v["hidden_size"])


class Vist2VisionTower(nn.Module):
    """uint8 grayscale renders [n, H, W] -> patch features [n, patches, d] (row-major grid): our
    patch embedding (SigLIP's square-image embedding does not fit H != W), then transformers'
    own SigLIP encoder layers and a final LayerNorm (SigLIP names, convert/siglip.py)."""

    def __init__(self, config: Vist2Config):
        super().__init__()
        v, c = config.vision, config.chunk
        self.channels = v["num_channels"]
        self.grid = (c["image_height"] // v["patch_size"], c["image_width"] // v["patch_size"])
        self.embeddings = _Embeddings(v, self.grid[0] * self.grid[1])
        siglip = SiglipVisionConfig(hidden_size=v["hidden_size"], intermediate_size=v["ffn_hidden_size"],
                                    num_hidden_layers=v["num_layers"], num_attention_heads=v["num_heads"],
                                    num_channels=v["num_channels"], patch_size=v["patch_size"],
                                    layer_norm_eps=v["layernorm_eps"], hidden_act="gelu_pytorch_tanh",
                                    attention_dropout=0.0)
        siglip._attn_implementation = "sdpa"
        self.encoder = SiglipEncoder(siglip)
        self.post_layernorm = nn.LayerNorm(v["hidden_size"], eps=v["layernorm_eps"])

    def forward(self, images):
        x = images.to(self.post_layernorm.weight.dtype) / 127.5 - 1.0      # SigLIP's [-1, 1]
        x = self.embeddings.patch_embedding(x[:, None].expand(-1, self.channels, -1, -1))
        x = x.flatten(2).transpose(1, 2) + self.embeddings.position_embedding.weight
        return self.post_layernorm(self.encoder(inputs_embeds=x).last_hidden_state)


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


class Vist2ForCausalLM(PreTrainedModel, GenerationMixin):
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

    def asset_files(self) -> List[str]:
        """Files beside the weights that rendering needs: the font and the tokenizer."""
        files = list(getattr(self.config, "asset_files", None) or [])
        return files or [self.config.render["font"], self.config.tokenizer_file]

    def _source_dir(self) -> Path:
        where = Path(self.config._name_or_path).absolute()   # the font path must not depend on the cwd
        missing = [f for f in self.asset_files() if f and not (where / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"the VIST2 model directory '{where}' lacks {missing}, which rendering needs (the "
                f"font and tokenizer travel with the weights): re-export it with "
                f"tools/convert_checkpoint.py --vist2, or copy it with save_pretrained")
        return where

    def _assets(self):
        if self._renderer is None:
            where = self._source_dir()
            render = dict(self.config.render)
            render["font"] = str(where / render["font"])          # the bundled font file
            c = self.config.chunk
            renderer = Renderer(SimpleNamespace(**render), c["image_height"], c["image_width"])
            if self.config.tokenizer_file and (where / self.config.tokenizer_file).is_file():
                import sentencepiece as spm
                sp = spm.SentencePieceProcessor(model_file=str(where / self.config.tokenizer_file))
                size, decode = sp.GetPieceSize(), lambda ids: sp.DecodeIds([int(i) for i in ids])
            else:
                from transformers import AutoTokenizer
                # trust_remote_code=False: the tokenizer is a plain one; without it transformers sees
                # config.json's auto_map and asks on stdin (15 s) whether to run this code
                tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True, trust_remote_code=False)
                size = len(tok)
                decode = lambda ids: tok.decode([int(i) for i in ids], skip_special_tokens=False,   # noqa: E731
                                                clean_up_tokenization_spaces=False)
            expected = getattr(self.config, "tokenizer_vocab_size", None) or self.config.text_config.vocab_size
            if size != expected:
                raise ValueError(f"the tokenizer in '{where}' has {size} entries but this checkpoint was "
                                 f"trained with a {expected}-entry vocabulary: put the training "
                                 f"tokenizer's files in the directory")
            self._renderer, self._tokenizer = renderer, decode
        return self._renderer, self._tokenizer

    @property
    def tokenizer_vocab_size(self) -> int:
        """Rows of the output layer that are tokens; the rest (an imported model's padding, as in
        Qwen3's 151,936 rows for 151,669 pieces) are cut from the logits, never sampled."""
        return getattr(self.config, "tokenizer_vocab_size", None) or self.config.text_config.vocab_size

    def decode(self, ids: List[int]) -> str:
        return self._assets()[1](ids)

    def render(self, chunk_ids: List[List[int]]) -> torch.Tensor:
        """Token ids of finished chunks -> their images, uint8 [n, H, W]."""
        renderer, decode = self._assets()
        return torch.from_numpy(np.stack([renderer.render_chunk(ids, decode) for ids in chunk_ids]))

    # ------------------------------------------------------------ forward over plain text
    def text_layout(self, input_ids, attention_mask=None):
        """Plain token rows [B, T] (``attention_mask``: 1 = token, left or right padding) -> the
        packed VIST2 layout of each row read as one document in history mode, as training lays it
        out (vist2_packing.py = megatron_vist2's data/packing.py, interleaved order): chunks of L
        tokens, every finished chunk (the last one too, when full) followed by its m visual
        tokens, compressed positions. -> (layout dict for ``forward``, index [B, T] of the
        position whose output predicts the token after each input token, -1 at padding)."""
        L, m = self.L, self.m
        B, T = input_ids.shape
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rows, chunks, predictors = [], [], []
        for b in range(B):
            where = keep[b].nonzero()[:, 0].tolist()
            ids = input_ids[b, where].tolist()
            if max_position(len(ids), L, m) >= self.config.text_config.max_position_embeddings:
                raise ValueError(f"row {b} has {len(ids)} tokens, which need RoPE position "
                                 f"{max_position(len(ids), L, m)}; the model has max_position_embeddings "
                                 f"{self.config.text_config.max_position_embeddings} (pass fewer tokens, "
                                 f"e.g. lm-eval's max_length)")
            # one extra token: training's layout then gives the last token's predictor (a full
            # last chunk gets its image); the extra token is the row's last entry, dropped
            seg = Segment(0, 0, len(ids) + 1, (False,) * -(-(len(ids) + 1) // L))
            row = assemble_row([seg], [np.asarray(ids + [0])], L, m, seg.row_tokens(L, m), order="interleaved")
            at = {int(t): p for p, t in enumerate(row.target) if t >= 0}
            predictor = [-1] * T
            for i, w in enumerate(where):
                predictor[w] = at[i + 1]
            rows.append(row)
            chunks += [c.tolist() for c in row.image_chunks]
            predictors.append(predictor)
        S = max(len(r.tokens) - 1 for r in rows)
        lay = {k: torch.full((B, S), v, dtype=torch.long, device="cpu") for k, v in
               (("input_ids", 0), ("kind", PAD), ("chunk", 0), ("position_ids", 0), ("doc", -1))}
        for b, row in enumerate(rows):
            n = len(row.tokens) - 1
            for k, col in (("input_ids", row.tokens), ("kind", row.kind), ("chunk", row.chunk),
                           ("position_ids", row.position), ("doc", row.doc)):
                lay[k][b, :n] = torch.from_numpy(col[:n])
        lay["readback"] = torch.zeros((B, S), dtype=torch.bool, device="cpu")
        lay["images"] = self.render(chunks) if chunks else None
        return lay, torch.tensor(predictors, dtype=torch.long, device="cpu")     # host-side, moved by forward

    # ------------------------------------------------------------ forward over a packed layout
    def forward(self, input_ids, attention_mask=None, images=None, kind=None, position_ids=None,
                doc=None, chunk=None, readback=None, **kwargs) -> CausalLMOutput:
        """Without ``kind``: plain token rows ``input_ids`` [B, T] (``attention_mask`` for padding,
        left or right) as causal-LM users and lm-evaluation-harness pass them: each row is laid
        out as VIST2 chunks (``text_layout``); logits [B, T, tokenizer_vocab_size] come back at the text
        positions, ``logits[:, t]`` predicting token t + 1 from what VIST2 sees (the text of the
        current chunk and the visual tokens of finished ones); 0 at padding.
        With ``kind``: a packed layout; ``input_ids`` [B, S] (0 at visual and padding
        positions), ``images`` uint8 [n, H, W] fill the VISUAL positions in row-major order (m
        per image); ``doc``, ``chunk``, ``readback``, ``position_ids`` as in megatron_vist2's
        TokenLayout; logits at every position."""
        if kind is None:
            lay, predictor = self.text_layout(input_ids, attention_mask)
            device = self.language_model.get_input_embeddings().weight.device
            logits = self.forward(**{k: None if v is None else v.to(device) for k, v in lay.items()}).logits
            logits = logits[..., :self.tokenizer_vocab_size]
            gathered = logits.gather(1, predictor.clamp(min=0).to(device)[..., None].expand(-1, -1, logits.shape[-1]))
            return CausalLMOutput(logits=gathered.masked_fill((predictor < 0).to(device)[..., None], 0.0))
        embeds = self.language_model.get_input_embeddings()(input_ids.clamp(min=0))
        visual = kind == VISUAL
        if images is not None and images.shape[0]:
            vis = self.encode_images(images).to(embeds.dtype)
            embeds = embeds.masked_scatter(visual[..., None], vis)
        mask = dense_mask(TokenLayout(doc=doc, chunk=chunk, kind=kind, readback=readback.bool(),
                                      position=position_ids))
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)
        return CausalLMOutput(logits=out.logits)

    # ------------------------------------------------------------ compressed generation
    def generate(self, input_ids, attention_mask=None, generation_config=None, streamer=None,
                 seed=None, **kwargs) -> torch.Tensor:
        """Cached generation with running compression -> [B, input + new] token ids (finished
        rows padded with ``pad_token_id``). transformers' conventions: ``generation_config`` and
        its fields as keyword arguments (``max_new_tokens`` or ``max_length``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``,
        ``stop_strings``), ``attention_mask`` for padded batches (left or right), ``streamer``.
        Sampling draws from torch's global generator (``transformers.set_seed``) or, with
        ``seed=``, from a generator of its own."""
        return cached_generate(self, input_ids, attention_mask, generation_config,
                               streamer, seed, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save (weights, config, the .py files) plus the font and tokenizer files."""
        where = self._source_dir()
        super().save_pretrained(save_directory, *args, **kwargs)
        out = Path(save_directory)
        for f in self.asset_files():
            if f and (where / f).resolve() != (out / f).resolve():
                shutil.copy(where / f, out / f)
