"""The vision encoder <-> Hugging Face SigLIP / SigLIP2 vision towers (``SiglipVisionModel``, or
the vision half of ``SiglipModel``): one declarative name mapping used both ways. Layouts match
one to one (conv patch embedding, learned positions, pre-LayerNorm blocks with biased q/k/v/o,
GELU-tanh MLP, final LayerNorm) and both read pixels scaled to [-1, 1] (SigLIP's mean 0.5, std
0.5). Not used by VIST2 and reported as such on import: SigLIP's attention-pooling head and, in
a full SiglipModel, the text tower. When the checkpoint's position table is for another patch
grid (SigLIP2 at 256 px vs our chunk images), it is resized bicubically to ours, as SigLIP2
itself does for other resolutions.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
import torch.nn.functional as F

from ..config import Config
from ..checkpoint.safetensors_io import SafetensorsDir
from ..errors import CheckpointError
from .hf_io import check_all_used, check_fields, check_shapes, transformers_shapes

PREFIX = "vision_model."     # the vision tower inside a SiglipModel (and in older saves)
# (our name under front.vision, SigLIP's name under vision_model.); "{i}" is the layer index
SIGLIP_MAP = (
    ("patch_embed.weight", "embeddings.patch_embedding.weight"),
    ("patch_embed.bias", "embeddings.patch_embedding.bias"),
    ("position_embed", "embeddings.position_embedding.weight"),
    ("layers.{i}.input_norm.weight", "encoder.layers.{i}.layer_norm1.weight"),
    ("layers.{i}.input_norm.bias", "encoder.layers.{i}.layer_norm1.bias"),
    ("layers.{i}.attention.q_proj.weight", "encoder.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.attention.q_proj.bias", "encoder.layers.{i}.self_attn.q_proj.bias"),
    ("layers.{i}.attention.k_proj.weight", "encoder.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.attention.k_proj.bias", "encoder.layers.{i}.self_attn.k_proj.bias"),
    ("layers.{i}.attention.v_proj.weight", "encoder.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.attention.v_proj.bias", "encoder.layers.{i}.self_attn.v_proj.bias"),
    ("layers.{i}.attention.o_proj.weight", "encoder.layers.{i}.self_attn.out_proj.weight"),
    ("layers.{i}.attention.o_proj.bias", "encoder.layers.{i}.self_attn.out_proj.bias"),
    ("layers.{i}.post_attention_norm.weight", "encoder.layers.{i}.layer_norm2.weight"),
    ("layers.{i}.post_attention_norm.bias", "encoder.layers.{i}.layer_norm2.bias"),
    ("layers.{i}.mlp.up_proj.weight", "encoder.layers.{i}.mlp.fc1.weight"),
    ("layers.{i}.mlp.up_proj.bias", "encoder.layers.{i}.mlp.fc1.bias"),
    ("layers.{i}.mlp.down_proj.weight", "encoder.layers.{i}.mlp.fc2.weight"),
    ("layers.{i}.mlp.down_proj.bias", "encoder.layers.{i}.mlp.fc2.bias"),
    ("post_norm.weight", "post_layernorm.weight"),
    ("post_norm.bias", "post_layernorm.bias"),
)


def name_pairs(cfg: Config, prefix: str = "") -> Iterator[Tuple[str, str]]:
    """Every (our full name, SigLIP name) pair of the configured vision encoder; ``prefix`` is
    ``vision_model.`` inside a SiglipModel, empty in a SiglipVisionModel saved by transformers 5."""
    for ours, hf in SIGLIP_MAP:
        for i in (range(cfg.model.vision.num_layers) if "{i}" in ours else [None]):
            yield "front.vision." + ours.format(i=i), prefix + hf.format(i=i)


def grid(cfg: Config) -> Tuple[int, int]:
    p = cfg.model.vision.patch_size
    return cfg.model.chunk.image_height // p, cfg.model.chunk.image_width // p


def hf_config(cfg: Config):
    from transformers import SiglipVisionConfig
    v, (gh, gw) = cfg.model.vision, grid(cfg)
    if gh != gw:
        raise CheckpointError(f"SiglipVisionConfig has square images; ours are {cfg.model.chunk.image_height}"
                         f" x {cfg.model.chunk.image_width}: export the vision tower of a square-chunk config")
    return SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.ffn_hidden_size,
                              num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                              num_channels=v.num_channels, image_size=cfg.model.chunk.image_height,
                              patch_size=v.patch_size, layer_norm_eps=v.layernorm_eps,
                              hidden_act="gelu_pytorch_tanh", vision_use_head=False)


def _resize_positions(table: torch.Tensor, to: Tuple[int, int]) -> torch.Tensor:
    side = int(round(table.shape[0] ** 0.5))
    if side * side != table.shape[0]:
        raise CheckpointError(f"a position table of {table.shape[0]} rows is not a square patch grid "
                              f"(embeddings.position_embedding.weight): cannot resize it to ours")
    x = table.reshape(side, side, -1).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=to, mode="bicubic", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).reshape(to[0] * to[1], -1)


def import_vision(hf_dir: str, cfg: Config, log=print) -> Dict[str, torch.Tensor]:
    """A SigLIP / SigLIP2 directory -> our vision encoder's parameters (front.vision.*)."""
    d = SafetensorsDir(hf_dir)
    config_path = d.dir / "config.json"
    hf = d.config()
    hf = hf.get("vision_config", hf)                  # a full SiglipModel nests the vision config
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_path}: vision_config must be an object, got {hf!r}")
    v = cfg.model.vision
    check_fields(config_path, hf, {
        "hidden_size": v.hidden_size, "intermediate_size": v.ffn_hidden_size,
        "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_heads,
        "patch_size": v.patch_size}, "vision encoder")
    prefix = PREFIX if any(n.startswith(PREFIX) for n in d.names()) else ""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    names = [name for _, name in name_pairs(cfg, prefix)]
    check_shapes(d, names, transformers_shapes(
        config_path, lambda: SiglipVisionModel(SiglipVisionConfig.from_dict(hf))), config_path, strip=PREFIX)
    out, used = {}, set()
    for ours, name in name_pairs(cfg, prefix):
        t = d.get(name).float()
        used.add(name)
        if ours.endswith("patch_embed.weight") and t.shape[1] != v.num_channels:
            raise CheckpointError(f"{d.file_of(name)}: {name} takes {t.shape[1]} channels, "
                                  f"model.vision.num_channels is {v.num_channels}: set "
                                  f"model.vision.num_channels={t.shape[1]}")
        if ours.endswith("position_embed") and t.shape[0] != grid(cfg)[0] * grid(cfg)[1]:
            log(f"{name}: {t.shape[0]} positions resized to our {grid(cfg)[0]} x {grid(cfg)[1]} patch grid")
            t = _resize_positions(t, grid(cfg))
        out[ours] = t
    ignored = check_all_used(d.dir, d.names(), used, [prefix + "head.", "text_model.", "logit_"])
    if ignored:
        log(f"not used by VIST2 (attention-pooling head / text tower): {len(ignored)} tensor(s) of {d.dir}")
    return out
