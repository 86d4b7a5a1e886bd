"""The language backbone <-> Hugging Face ``Qwen3ForCausalLM`` (or ``LlamaForCausalLM`` when
``model.llm.qk_norm`` is false: Llama is the same decoder without QK-norm): one declarative name
mapping, used by both export and import. Dimensions come from the config; nothing is hard-coded.

Layouts match one to one (separate Q/K/V and gate/up matrices, rotate-half RoPE, QK-norm, RMSNorm),
so the only transform is the vocabulary: our embedding and output layer are padded to a multiple
of ``make_vocab_size_divisible_by x tensor_parallel`` rows; export drops the padding rows, import
adds them back (zeros: padded ids are never produced by the tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import torch

from ..config import Config, padded_vocab_size
from ..checkpoint.safetensors_io import SafetensorsDir
from .hf_io import check_all_used, check_fields, mapped_tensors, write_safetensors_dir

# (our name, Hugging Face name, is a vocabulary matrix); "{i}" is the decoder layer index.
QWEN3_MAP = (
    ("front.embedding.weight", "model.embed_tokens.weight", True),
    ("layers.{i}.input_norm.weight", "model.layers.{i}.input_layernorm.weight", False),
    ("layers.{i}.attention.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight", False),
    ("layers.{i}.attention.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight", False),
    ("layers.{i}.attention.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight", False),
    ("layers.{i}.attention.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight", False),
    ("layers.{i}.attention.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight", False),
    ("layers.{i}.attention.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight", False),
    ("layers.{i}.post_attention_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", False),
    ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight", False),
    ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight", False),
    ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight", False),
    ("head.norm.weight", "model.norm.weight", False),
    ("head.output.weight", "lm_head.weight", True),          # only when embeddings are untied
)


def name_pairs(cfg: Config) -> Iterator[Tuple[str, str, bool]]:
    """Every (ours, Hugging Face, is_vocab) pair of the configured backbone."""
    for ours, hf, vocab in QWEN3_MAP:
        if ours == "head.output.weight" and cfg.model.llm.tie_embeddings:
            continue
        if "_norm.weight" in ours and ".attention." in ours and not cfg.model.llm.qk_norm:
            continue                                   # q_norm / k_norm: Qwen3 only
        layers = range(cfg.model.llm.num_layers) if "{i}" in ours else [None]
        for i in layers:
            yield ours.format(i=i), hf.format(i=i), vocab


def hf_config(cfg: Config):
    """Qwen3Config, or LlamaConfig for a backbone without QK-norm."""
    from transformers import LlamaConfig, Qwen3Config
    llm = cfg.model.llm
    return (Qwen3Config if llm.qk_norm else LlamaConfig)(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.ffn_hidden_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads, head_dim=llm.head_dim, rms_norm_eps=llm.norm_eps,
        rope_theta=llm.rope_theta, tie_word_embeddings=llm.tie_embeddings,
        max_position_embeddings=max(cfg.data.seq_length, 4096))


def export_backbone(weight: Callable[[str], torch.Tensor], cfg: Config, out_dir: str,
                    shard_bytes: int = 2 << 30) -> Path:
    """Write the backbone as a Qwen3ForCausalLM directory, ``weight(name)`` giving each of our
    full (unsharded) parameters in turn: config.json + safetensors shards (one in memory at a
    time) + an index, renamed into place when complete."""
    return write_safetensors_dir(mapped_tensors(name_pairs(cfg), weight, cfg.model.llm.vocab_size),
                                 out_dir, shard_bytes, hf_config(cfg).save_pretrained)


def import_backbone(hf_dir: str, cfg: Config) -> Dict[str, torch.Tensor]:
    """A Qwen3ForCausalLM directory -> our backbone's full parameters (vision encoder and aligner
    are not part of it). The config must describe the same backbone; vocab rows are padded;
    a tensor the mapping does not use is an error."""
    d = SafetensorsDir(hf_dir)
    llm = cfg.model.llm
    hf = dict(d.config())
    hf["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    hf["rope_theta"] = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta")
    check_fields(d.dir / "config.json", hf, {
        "model_type": "qwen3" if llm.qk_norm else "llama",      # llama: model.llm.qk_norm=false
        "hidden_size": llm.hidden_size, "num_hidden_layers": llm.num_layers,
        "num_attention_heads": llm.num_heads, "num_key_value_heads": llm.num_kv_heads,
        "head_dim": llm.head_dim, "intermediate_size": llm.ffn_hidden_size,
        "vocab_size": llm.vocab_size, "tie_word_embeddings": llm.tie_embeddings,
        "rope_theta": llm.rope_theta, "rms_norm_eps": llm.norm_eps}, "backbone")
    Vp = padded_vocab_size(cfg)
    out, used = {}, set()
    for ours, name, vocab in name_pairs(cfg):
        t = d.get(name).float()
        used.add(name)
        if vocab:
            t = torch.cat([t, t.new_zeros(Vp - t.shape[0], t.shape[1])])
        out[ours] = t
    # a tied checkpoint may still store lm_head.weight (equal to the embedding)
    check_all_used(d.dir, d.names(), used, ["lm_head."] if llm.tie_embeddings else [])
    return out
