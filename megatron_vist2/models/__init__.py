"""Model code, written plain: parallelism comes from megatron-core layers and process groups."""
from .attention import PAD, TEXT, VISUAL, TokenLayout, dense_mask, vist2_mask_mod
from .vist2 import Vist2Batch, Vist2Model, model_parallel_config

__all__ = ["PAD", "TEXT", "VISUAL", "TokenLayout", "Vist2Batch", "Vist2Model", "dense_mask",
           "model_parallel_config", "vist2_mask_mod"]
