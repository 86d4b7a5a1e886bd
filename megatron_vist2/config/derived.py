"""Values derived from the config, in one place: what the code computes from more than one
field (the data-parallel size from the world size, the padded vocabulary, each pipeline stage's
layers, the parameter counts). A value derived from one dataclass alone is a property on it (``ModelConfig.
visual_tokens_per_chunk``, ``compression_ratio``)."""
from __future__ import annotations

from typing import Dict, List, Optional

from .schema import Config


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel)


def gradient_accumulation_steps(cfg: Config, world_size: int) -> int:
    dp = data_parallel_size(cfg, world_size)
    return cfg.parallel.global_batch_size // (cfg.parallel.micro_batch_size * dp)


def grad_accum_bytes(cfg: Config, weight_bytes: int) -> int:
    """Bytes per element of the buffer DeepSpeed accumulates micro-batch gradients in, for
    weights of ``weight_bytes`` (4 fp32, 2 bf16): fp32 whenever ZeRO (1-3) is on, as Megatron
    accumulates; bf16 weights without ZeRO accumulate in bf16 (DeepSpeed has no fp32 accumulation
    for its unfused bf16 optimizer). training/deepspeed_config.py sets it, cost/planner.py
    counts its memory and traffic."""
    return 4 if weight_bytes == 4 or cfg.parallel.zero_stage >= 1 else weight_bytes


def gradient_reductions_per_step(cfg: Config, world_size: int) -> int:
    """How often DeepSpeed reduces each gradient over the data-parallel group per optimizer step:
    ZeRO 0 and 1 once, at the accumulation boundary; ZeRO 2 and 3 partition gradients and reduce
    (all-reduce buckets at 2, reduce-scatter at 3) after every micro-batch's backward
    (deepspeed/runtime/zero/stage_1_and_2.py ``if self.partition_gradients or boundary``)."""
    return gradient_accumulation_steps(cfg, world_size) if cfg.parallel.zero_stage >= 2 else 1


def name_under(name: str, prefix: str) -> bool:
    """Is parameter (or module) ``name`` inside ``prefix`` (``train.freeze``,
    ``optim.lr_multipliers``)? ``front.vision`` covers ``front.vision.x`` but not ``front.visionx``."""
    return name == prefix or name.startswith(prefix + ".")


# Parts of the model that only help training and read-back, none of the exported model: the config
# field that turns each on -> the prefix of its parameters. A new stage (checkpoint.init_from) may
# add one (it keeps its initialisation) or drop one (its tensors stay behind).
TRAINING_AIDS = {"model.ocr_head": "front.ocr_head", "model.readback_cursor": "front.cursor"}


def guided_layers(cfg: Config) -> int:
    """Decoder layers trained by guided attention (``train.cursor_attention_layers``; 0 when
    ``train.cursor_attention_weight`` is 0: off)."""
    return cfg.train.cursor_attention_layers if cfg.train.cursor_attention_weight > 0 else 0


def reads_back(cfg: Config) -> bool:
    """Can a chunk of this run's training rows be in read-back mode? The shares of
    ``data.readback_schedule`` when it is set (it replaces ``data.readback_fraction``, as
    training/curriculum.py reads them), else ``data.readback_fraction``."""
    shares = [share for _, share in cfg.data.readback_schedule] or [cfg.data.readback_fraction]
    return any(float(share) > 0 for share in shares)


def ocr_aux_loss(cfg: Config) -> bool:
    """Does a row-training run (train.objective=lm) add the OCR head's loss on its images?"""
    return (cfg.model.ocr_head.enabled and cfg.model.context == "vist2" and cfg.train.objective == "lm"
            and cfg.train.ocr_weight > 0)


def frozen_by_objective(cfg: Config) -> List[str]:
    """Parameter prefixes the objective leaves out of training, besides train.freeze: the front-only
    stage 0 (train.objective=ocr) trains the ViT, the aligner and the OCR head only (not the
    reading cursor either: no text is read); an OCR head without a loss (train.ocr_weight=0) stays
    as it is."""
    if cfg.train.objective == "ocr":
        return ["front.embedding", "layers", "head"] + (["front.cursor"] if cfg.model.readback_cursor else [])
    if cfg.model.ocr_head.enabled and not ocr_aux_loss(cfg):
        return ["front.ocr_head"]
    return []


def stage_layer_counts(cfg: Config) -> List[int]:
    """Decoder layers held by each pipeline stage, first to last."""
    p, n = cfg.parallel, cfg.model.llm.num_layers
    if p.pipeline_layers is not None:
        return list(p.pipeline_layers)
    return [n // p.pipeline_parallel] * p.pipeline_parallel


def stage_layers(cfg: Config, stage: int) -> range:
    """Global indices of the decoder layers on pipeline stage ``stage``."""
    counts = stage_layer_counts(cfg)
    start = sum(counts[:stage])
    return range(start, start + counts[stage])


def tokenizer_size_problem(cfg: Config, pieces: int, tokenizer: str) -> Optional[str]:
    """The start-up rule between a tokenizer of ``pieces`` pieces and the model: equal to
    model.llm.vocab_size, or, when the model declares extra embedding rows (an imported Hugging
    Face model), equal to model.llm.tokenizer_vocab_size. None when it holds, else what to do."""
    llm = cfg.model.llm
    if llm.tokenizer_vocab_size is not None:
        if pieces == llm.tokenizer_vocab_size:
            return None
        return (f"the tokenizer {tokenizer} has {pieces} pieces but model.llm.tokenizer_vocab_size "
                f"is {llm.tokenizer_vocab_size} (the model has {llm.vocab_size} embedding rows): "
                f"this is not the tokenizer the model was declared with; use that tokenizer"
                + (f", or set model.llm.tokenizer_vocab_size={pieces} if its extra rows are unused"
                   if pieces < llm.vocab_size else ""))
    if pieces == llm.vocab_size:
        return None
    if pieces > llm.vocab_size:
        return (f"model.llm.vocab_size is {llm.vocab_size} but the tokenizer {tokenizer} has {pieces} "
                f"pieces, more than the embedding has rows: use the model's tokenizer, or set "
                f"model.llm.vocab_size={pieces} for a new model")
    return (f"model.llm.vocab_size is {llm.vocab_size} but the tokenizer {tokenizer} has {pieces} "
            f"pieces; set model.llm.vocab_size={pieces} for a new model, or, if the model's "
            f"{llm.vocab_size - pieces} extra rows are unused padding (an imported Hugging Face "
            f"model), declare it with model.llm.tokenizer_vocab_size={pieces}")


def padded_vocab_size(cfg: Config) -> int:
    """Vocabulary as built: padded so every tensor-parallel rank holds an equal slice."""
    llm = cfg.model.llm
    multiple = llm.make_vocab_size_divisible_by * cfg.parallel.tensor_parallel
    return -(-llm.vocab_size // multiple) * multiple


def analytic_parameter_counts(cfg: Config) -> Dict[str, int]:
    """Parameters of the spec's parts from the config alone (no model is built):
    {vision, aligner, llm, ocr_head, cursor, total}. The controls (``model.context`` text / window) have no ViT or
    aligner.

    ViT (SigLIP shape, d = hidden, f = FFN, P = patches, C = channels, p = patch):
        patch conv C p^2 d + d, positions P d, per layer 4d (two LayerNorms) + 4(d^2 + d) (q, k, v, o)
        + (d f + f) + (f d + d) (MLP), final LayerNorm 2d.
    Aligner: (k^2 d) D + D.
    LLM (D = hidden, F = FFN, h / g = query / KV heads, e = head dim, V = padded vocab):
        embedding V D, per layer 2D (norms) + D h e + 2 D g e + h e D (q, k, v, o) + 2e (QK-norm, if on)
        + 3 D F (SwiGLU), final norm D, output layer V D unless tied.
    """
    m = cfg.model
    v, llm, k = m.vision, m.llm, m.aligner.merge
    d, f, P = v.hidden_size, v.ffn_hidden_size, m.patches_per_image
    vision = (v.num_channels * v.patch_size ** 2 * d + d + P * d
              + v.num_layers * (4 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)) + 2 * d)
    D, F, h, g, e = llm.hidden_size, llm.ffn_hidden_size, llm.num_heads, llm.num_kv_heads, llm.head_dim
    aligner = k * k * d * D + D
    V = padded_vocab_size(cfg)
    layer = 2 * D + D * h * e + 2 * D * g * e + h * e * D + (2 * e if llm.qk_norm else 0) + 3 * D * F
    lm = V * D + llm.num_layers * layer + D + (0 if llm.tie_embeddings else V * D)
    if m.context != "vist2":                   # the controls have no vision encoder or aligner
        vision = aligner = 0
    ocr = ocr_head_parameters(cfg) if m.ocr_head.enabled and m.context == "vist2" else 0
    # the reading cursor: a row embedding per grid line and one for the end, a column embedding
    cursor = (m.ocr_head.lines + 1 + m.ocr_head.columns) * D if m.readback_cursor and m.context == "vist2" else 0
    return {"vision": vision, "aligner": aligner, "llm": lm, "ocr_head": ocr, "cursor": cursor,
            "total": vision + aligner + lm + ocr + cursor}


def ocr_head_parameters(cfg: Config) -> int:
    """The OCR head (models/ocr_head.py, W = its width, S = cell features, Q = queries, C = classes):
    input projection D W + W, token positions m W, the self-attention block 8 W^2 + 11 W (two
    LayerNorms, q/k/v/out, MLP W -> 2W -> W), each cross-attention block that + 2 W (the memory's
    LayerNorm), queries Q W, cell expansion W (4 S) + 4 S, cell LayerNorm 2 S, classifier S C + C."""
    m, o = cfg.model, cfg.model.ocr_head
    W, S = o.hidden_size, o.slot_size
    block = 8 * W * W + 11 * W
    return (m.llm.hidden_size * W + W + m.visual_tokens_per_chunk * W + block
            + o.num_layers * (block + 2 * W) + o.num_queries * W
            + W * o.slots_per_query * S + o.slots_per_query * S + 2 * S + S * o.num_classes + o.num_classes)
