"""One config system: typed dataclasses, YAML presets, dotted overrides, validation up front."""
from .derived import (TRAINING_AIDS, analytic_parameter_counts, data_parallel_size, frozen_by_objective, grad_accum_bytes,
                      gradient_accumulation_steps, gradient_reductions_per_step, name_under, ocr_aux_loss,
                      padded_vocab_size, reads_back, stage_layer_counts, stage_layers, tokenizer_size_problem)
from .load import (ConfigError, apply_overrides, available_presets, config_from_dict,
                   config_to_dict, load_config)
from .schema import Config
from .validate import recorded_config, validate

__all__ = ["TRAINING_AIDS", "Config", "ConfigError", "analytic_parameter_counts", "apply_overrides", "available_presets",
           "config_from_dict", "config_to_dict", "data_parallel_size", "frozen_by_objective", "grad_accum_bytes",
           "gradient_accumulation_steps", "gradient_reductions_per_step", "load_config", "name_under",
           "ocr_aux_loss", "padded_vocab_size", "reads_back", "recorded_config", "stage_layer_counts", "stage_layers",
           "tokenizer_size_problem", "validate"]
