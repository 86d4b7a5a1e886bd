"""Values derived from the config, in one place: what the code computes from more than one
field (the data-parallel size from the world size, the padded vocabulary, each pipeline stage's
layers). A value derived from one dataclass alone is a property on it (``ModelConfig.
visual_tokens_per_chunk``, ``compression_ratio``)."""
from __future__ import annotations

from typing import List, Optional

from .schema import Config


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel)


def gradient_accumulation_steps(cfg: Config, world_size: int) -> int:
    dp = data_parallel_size(cfg, world_size)
    return cfg.parallel.global_batch_size // (cfg.parallel.micro_batch_size * dp)


def name_under(name: str, prefix: str) -> bool:
    """Is parameter (or module) ``name`` inside ``prefix`` (``train.freeze``,
    ``optim.lr_multipliers``)? ``front.vision`` covers ``front.vision.x`` but not ``front.visionx``."""
    return name == prefix or name.startswith(prefix + ".")


def ocr_aux_loss(cfg: Config) -> bool:
    """Does a row-training run (train.objective=lm) add the OCR head's loss on its images?"""
    return (cfg.model.ocr_head.enabled and cfg.model.context == "vist2" and cfg.train.objective == "lm"
            and cfg.train.ocr_weight > 0)


def frozen_by_objective(cfg: Config) -> List[str]:
    """Parameter prefixes the objective leaves out of training, besides train.freeze: the front-only
    stage 0 (train.objective=ocr) trains the ViT, the aligner and the OCR head only; an OCR head
    without a loss (train.ocr_weight=0) stays as it is."""
    if cfg.train.objective == "ocr":
        return ["front.embedding", "layers", "head"]
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
