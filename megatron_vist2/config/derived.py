"""Values derived from the config, in one place: what the code computes from more than one
field (the data-parallel size from the world size, the padded vocabulary, each pipeline stage's
layers). A value derived from one dataclass alone is a property on it (``ModelConfig.
visual_tokens_per_chunk``, ``compression_ratio``)."""
from __future__ import annotations

from typing import List

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


def padded_vocab_size(cfg: Config) -> int:
    """Vocabulary as built: padded so every tensor-parallel rank holds an equal slice."""
    llm = cfg.model.llm
    multiple = llm.make_vocab_size_divisible_by * cfg.parallel.tensor_parallel
    return -(-llm.vocab_size // multiple) * multiple
