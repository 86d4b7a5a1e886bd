"""The whole VIST2 model as a Hugging Face directory loaded with ``trust_remote_code``: the
backbone under ``language_model.`` (Qwen3ForCausalLM names, convert/qwen3.py's table), the ViT
under ``vision_tower.`` (SigLIP names, convert/siglip.py's table), the aligner under
``aligner.``; plus configuration_vist2.py / modeling_vist2.py / generation_vist2.py
(convert/remote_code/), the renderer's and the KV cache's source, the font and the tokenizer, so
the directory alone reproduces our outputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator, Tuple

import torch

from ..config import Config
from ..data import renderer as renderer_module
from ..data.tokenizer import load_tokenizer
from ..checkpoint.tokenizer_record import copy_tokenizer
from . import qwen3, siglip
from .hf_io import mapped_tensors, write_safetensors_dir

REMOTE_CODE = Path(__file__).parent / "remote_code"
KV_CACHE_SOURCE = Path(__file__).parents[1] / "inference" / "cache.py"   # the engine's cache, bundled
REMOTE_CODE_FILES = ("configuration_vist2.py", "modeling_vist2.py", "generation_vist2.py")
ALIGNER_MAP = (("front.aligner.proj.weight", "aligner.proj.weight"),
               ("front.aligner.proj.bias", "aligner.proj.bias"))
# The renderer is bundled as source; its two package imports become local definitions.
_RENDERER_IMPORTS = {
    "from ..config.schema import ModelConfig, RenderConfig":
        "ModelConfig = RenderConfig = object   # annotations only in this bundled copy",
    "from ..errors import RenderOverflowError":
        "class RenderOverflowError(ValueError):\n    pass",
}


def name_pairs(cfg: Config) -> Iterator[Tuple[str, str, bool]]:
    """(our name, exported name, is a vocabulary matrix) for every tensor of the model."""
    for ours, hf, vocab in qwen3.name_pairs(cfg):
        yield ours, "language_model." + hf, vocab
    for ours, hf in siglip.name_pairs(cfg, prefix="vision_tower."):
        yield ours, hf, False
    for ours, hf in ALIGNER_MAP:
        yield ours, hf, False


def hf_config(cfg: Config, tokenizer_file: str, asset_files=(), tokenizer_vocab_size=None) -> dict:
    m = cfg.model
    v, r = m.vision, m.render
    return {
        "model_type": "vist2", "architectures": ["Vist2ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_vist2.Vist2Config",
                     "AutoModelForCausalLM": "modeling_vist2.Vist2ForCausalLM"},
        "text_config": qwen3.hf_config(cfg).to_dict(),
        "vision": {"num_layers": v.num_layers, "hidden_size": v.hidden_size, "num_heads": v.num_heads,
                   "ffn_hidden_size": v.ffn_hidden_size, "patch_size": v.patch_size,
                   "num_channels": v.num_channels, "layernorm_eps": v.layernorm_eps},
        "aligner_merge": m.aligner.merge,
        "chunk": {"text_tokens": m.chunk.text_tokens, "image_height": m.chunk.image_height,
                  "image_width": m.chunk.image_width},
        "render": {"font": Path(r.font).name, "font_size": r.font_size, "min_font_size": r.min_font_size,
                   "mode": r.mode, "margin": r.margin, "line_spacing": r.line_spacing,
                   "tab_width": r.tab_width},
        "visual_tokens_per_chunk": m.visual_tokens_per_chunk,
        "tokenizer_file": tokenizer_file,
        "asset_files": list(asset_files), "tokenizer_vocab_size": tokenizer_vocab_size,
        "torch_dtype": "float32",
    }


def bundled_renderer_source() -> str:
    source = Path(renderer_module.__file__).read_text()
    for old, new in _RENDERER_IMPORTS.items():
        if old not in source:
            raise RuntimeError(f"data/renderer.py no longer has '{old}': update convert/vist2.py")
        source = source.replace(old, new)
    return source


def export_vist2(weight: Callable[[str], torch.Tensor], cfg: Config, tokenizer_path: str,
                 out_dir: str, shard_bytes: int = 2 << 30) -> Path:
    """Write the full model (streaming, one shard in memory) with everything it needs to run."""
    font = cfg.model.render.font
    if font in renderer_module.NAMED_FONTS:
        raise ValueError(f"model.render.font '{font}' is a face inside a font package; the export "
                         f"bundles font files only (use a .ttf/.otf file)")
    font_path = Path(renderer_module.font_source(font)[0])
    tok = Path(tokenizer_path)

    def save_everything(where: str):
        d = Path(where)
        tokenizer_file = "tokenizer.model" if tok.is_file() else ""
        for f in REMOTE_CODE_FILES:
            shutil.copy(REMOTE_CODE / f, d / f)
        (d / "vist2_renderer.py").write_text(bundled_renderer_source())
        shutil.copy(KV_CACHE_SOURCE, d / "vist2_kv_cache.py")             # imports torch only
        shutil.copy(font_path, d / font_path.name)
        assets = [font_path.name] + copy_tokenizer(tok, d, "tokenizer.model")
        config = hf_config(cfg, tokenizer_file, assets, load_tokenizer(str(tok)).vocab_size)
        (d / "config.json").write_text(json.dumps(config, indent=1))
    return write_safetensors_dir(mapped_tensors(name_pairs(cfg), weight, cfg.model.llm.vocab_size),
                                 out_dir, shard_bytes, save_everything)
