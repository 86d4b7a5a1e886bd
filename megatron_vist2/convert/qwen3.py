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
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from ..config import Config, padded_vocab_size
from ..checkpoint.safetensors_io import SafetensorsDir, read_config_json
from ..errors import CheckpointError
from .hf_io import check_all_used, check_shapes, mapped_tensors, transformers_shapes, write_safetensors_dir

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


def hf_class_name(cfg: Config) -> str:
    """The transformers class that loads the exported backbone."""
    return "Qwen3ForCausalLM" if cfg.model.llm.qk_norm else "LlamaForCausalLM"


def hf_config(cfg: Config, tokenizer=None):
    """Qwen3Config, or LlamaConfig for a backbone without QK-norm: architectures, context length
    (data.seq_length, at least 4096) and, given the tokenizer, its special tokens and, for a
    sentencepiece model, ``tokenizer_file`` (the file training used, which an import takes)."""
    from transformers import LlamaConfig, Qwen3Config
    from .tokens import SP_FILE, special_token_ids
    llm = cfg.model.llm
    extra = special_token_ids(tokenizer) if tokenizer is not None else {}
    if getattr(tokenizer, "sp", None) is not None:
        extra["tokenizer_file"] = SP_FILE
    return (Qwen3Config if llm.qk_norm else LlamaConfig)(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.ffn_hidden_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads, head_dim=llm.head_dim, rms_norm_eps=llm.norm_eps,
        rope_theta=llm.rope_theta, tie_word_embeddings=llm.tie_embeddings,
        max_position_embeddings=max(cfg.data.seq_length, 4096), architectures=[hf_class_name(cfg)],
        **extra)


def export_backbone(weight: Callable[[str], torch.Tensor], cfg: Config, out_dir: str,
                    shard_bytes: int = 2 << 30, tokenizer=None) -> Path:
    """Write the backbone as a Qwen3ForCausalLM (LlamaForCausalLM) directory, ``weight(name)``
    giving each of our full (unsharded) parameters in turn: config.json + safetensors shards (one
    in memory at a time) + an index + the tokenizer's files (checked with AutoTokenizer against
    ``tokenizer``), renamed into place when complete."""
    from .tokens import check_hf_tokenizer, write_hf_tokenizer

    def save(where: str):
        hf_config(cfg, tokenizer).save_pretrained(where)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, Path(where))
            check_hf_tokenizer(Path(where), tokenizer)
    return write_safetensors_dir(mapped_tensors(name_pairs(cfg), weight, cfg.model.llm.vocab_size),
                                 out_dir, shard_bytes, save)


def in_memory_backbone(model, cfg: Config, max_positions: int = 0):
    """Our backbone as transformers' own Qwen3ForCausalLM (LlamaForCausalLM), in memory: the same
    weights (this table's names) copied onto the model's device in its dtype, SDPA attention,
    ``max_position_embeddings`` at least ``max_positions`` (the peer in benchmarks and tests)."""
    from transformers import AutoModelForCausalLM
    p = next(model.parameters())
    config = hf_config(cfg)
    config.max_position_embeddings = max(config.max_position_embeddings, max_positions)
    with torch.device(p.device):
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=p.dtype)
    params = dict(model.named_parameters())
    state = dict(mapped_tensors(name_pairs(cfg), lambda n: params[n].detach(), cfg.model.llm.vocab_size))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if cfg.model.llm.tie_embeddings else set()):
        raise RuntimeError(f"transformers backbone: missing {missing}, unexpected {unexpected}")
    if cfg.model.llm.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


# config.json field (after _hf_fields) -> our field; the import derives the model from these
HF_FIELDS = {"qk_norm": "model.llm.qk_norm", "vocab_size": "model.llm.vocab_size",
             "hidden_size": "model.llm.hidden_size", "num_hidden_layers": "model.llm.num_layers",
             "num_attention_heads": "model.llm.num_heads", "num_key_value_heads": "model.llm.num_kv_heads",
             "head_dim": "model.llm.head_dim", "intermediate_size": "model.llm.ffn_hidden_size",
             "rope_theta": "model.llm.rope_theta", "rms_norm_eps": "model.llm.norm_eps",
             "tie_word_embeddings": "model.llm.tie_embeddings"}
ARCHITECTURES = {"qwen3": True, "llama": False}       # model_type -> QK-norm


INTEGER_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "intermediate_size")


def _hf_fields(where: Path, hf: dict) -> dict:
    """config.json -> the HF_FIELDS values (defaults filled as transformers fills them); a model
    our backbone cannot be, or a field of the wrong type, is refused naming the file and field."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise CheckpointError(f"{where}: model_type '{kind}' is not supported; the backbone imports "
                              f"{' and '.join(sorted(ARCHITECTURES))} (Qwen3ForCausalLM, LlamaForCausalLM)")
    rope = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
    if not isinstance(rope, dict):
        raise CheckpointError(f"{where}: rope_scaling / rope_parameters must be an object, got {rope!r}")
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise CheckpointError(f"{where}: rope scaling '{rope.get('rope_type', rope.get('type'))}' is not "
                              f"supported (our RoPE is the plain rotate-half one)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError(f"{where}: attention_bias / mlp_bias are not supported (our projections "
                              f"have no bias)")
    out = {k: hf.get(k) for k in HF_FIELDS}

    def positive_int(name):
        value = out[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"{where}: {name} must be a positive integer, got {value!r} "
                                  f"(it sets {HF_FIELDS[name]})")
        return value
    for name in ("hidden_size", "num_attention_heads"):
        positive_int(name)
    out["qk_norm"] = ARCHITECTURES[kind]
    if out["head_dim"] is None and out["hidden_size"] and out["num_attention_heads"]:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    out["num_key_value_heads"] = hf.get("num_key_value_heads") or out["num_attention_heads"]
    out["rope_theta"] = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    out["rms_norm_eps"] = hf.get("rms_norm_eps") or 1e-6
    tie = hf.get("tie_word_embeddings", False)            # both classes default to untied
    if not isinstance(tie, bool):
        raise CheckpointError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    out["tie_word_embeddings"] = tie
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(missing)}: not a complete {kind} config")
    for name in INTEGER_FIELDS:
        positive_int(name)
    for name in ("rope_theta", "rms_norm_eps"):
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{where}: {name} must be a number > 0, got {value!r} (it sets "
                                  f"{HF_FIELDS[name]})")
        out[name] = float(value)
    if out["num_attention_heads"] % out["num_key_value_heads"]:
        raise CheckpointError(f"{where}: num_attention_heads ({out['num_attention_heads']}) is not a "
                              f"multiple of num_key_value_heads ({out['num_key_value_heads']})")
    return out


def _same(a, b) -> bool:
    import math
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def overrides_from_hf(hf_dir: str) -> list:
    """The dotted overrides that make our backbone the one in ``hf_dir``'s config.json (and its
    tokenizer, when the directory holds one, data.tokenizer, with model.llm.tokenizer_vocab_size
    when it has fewer pieces than the embedding has rows)."""
    d = Path(hf_dir)
    raw = read_config_json(d)
    hf = _hf_fields(d / "config.json", raw)
    config_class, model_class = _transformers_class(raw)      # transformers' own checks, by file
    transformers_shapes(d / "config.json", lambda: model_class(config_class.from_dict(raw)))
    out = [f"{field}={_yaml(hf[name])}" for name, field in HF_FIELDS.items()]
    tokenizer = training_tokenizer(d, raw)
    if tokenizer is not None:
        out.append(f"data.tokenizer={tokenizer}")
        from ..data.tokenizer import load_tokenizer
        pieces = load_tokenizer(str(tokenizer)).vocab_size
        if pieces < hf["vocab_size"]:     # Qwen3: 151,669 pieces, 151,936 rows (the rest unused)
            out.append(f"model.llm.tokenizer_vocab_size={pieces}")
    return out


def training_tokenizer(d: Path, raw: dict) -> Optional[Path]:
    """The tokenizer of a Hugging Face model directory: the sentencepiece file its config.json
    names as ``tokenizer_file`` (our backbone export of a sentencepiece run: the very file it
    was trained with), else the directory when it holds tokenizer files, else None."""
    named = raw.get("tokenizer_file")
    if isinstance(named, str) and named and (d / named).is_file():
        return (d / named).resolve()
    if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return d.resolve()
    return None


def _transformers_class(raw: dict):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    return (Qwen3Config, Qwen3ForCausalLM) if ARCHITECTURES[raw["model_type"]] else (LlamaConfig, LlamaForCausalLM)


def import_backbone(hf_dir: str, cfg: Config) -> Dict[str, torch.Tensor]:
    """A Qwen3ForCausalLM directory -> our backbone's full parameters (vision encoder and aligner
    are not part of it). The config must describe the same backbone; vocab rows are padded;
    a tensor the mapping does not use is an error."""
    d = SafetensorsDir(hf_dir)
    llm = cfg.model.llm
    raw = d.config()
    hf = _hf_fields(d.dir / "config.json", raw)
    ours = {field: getattr(llm, field.split(".")[-1]) for field in HF_FIELDS.values()}
    wrong = [f"{name} = {hf[name]!r} but {field} = {ours[field]!r}: set {field}={_yaml(hf[name])}"
             for name, field in HF_FIELDS.items() if not _same(hf[name], ours[field])]
    if wrong:
        raise CheckpointError(f"{d.dir / 'config.json'} does not match the configured backbone:\n  - "
                              + "\n  - ".join(wrong) + "\n(tools/import_hf.py sets these from config.json "
                              "unless an override says otherwise)")
    config_class, model_class = _transformers_class(raw)
    check_shapes(d, [name for _, name, _ in name_pairs(cfg)],
                 transformers_shapes(d.dir / "config.json", lambda: model_class(config_class.from_dict(raw))),
                 d.dir / "config.json")
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
