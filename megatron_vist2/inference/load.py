"""Build an inference model from one of our checkpoints (DeepSpeed layout, ZeRO 0-2, TP = 1)."""
from __future__ import annotations

from typing import Iterable, Tuple

import torch

from ..config import Config, apply_overrides, config_from_dict, validate
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..errors import CheckpointError
from ..models.vist2 import Vist2Model
from ..training.checkpoint import MODEL_FILE, read_model_state


def load_for_inference(checkpoint: str, overrides: Iterable[str] = (),
                       tokenizer_path: str = None) -> Tuple[Vist2Model, Tokenizer, Config]:
    tag_dir, state = read_model_state(checkpoint)
    data = state.get("config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{tag_dir / MODEL_FILE} holds no megatron_vist2 config")
    cfg = validate(config_from_dict(apply_overrides(data, overrides)))
    cfg.parallel.sequence_parallel = False     # a training-time layout; the weights do not change
    tok = load_tokenizer(tokenizer_path or cfg.data.tokenizer)
    want = state.get("tokenizer_sha256")
    if want and tok.sha256 != want:
        raise CheckpointError(f"tokenizer mismatch: {tok.path} (sha256 {tok.sha256[:12]}..) is not "
                              f"the tokenizer {tag_dir} was trained with ({want[:12]}..)")
    if tok.vocab_size != cfg.model.llm.vocab_size:
        raise CheckpointError(f"tokenizer {tok.path} has {tok.vocab_size} pieces, the checkpoint's "
                              f"model.llm.vocab_size is {cfg.model.llm.vocab_size}")
    module = state["module"]
    if any(t.numel() == 0 for t in module.values() if isinstance(t, torch.Tensor)):
        raise CheckpointError(f"{tag_dir / MODEL_FILE} holds ZeRO-3 partitions, not full weights: "
                              f"consolidate it first (conversion issue)")
    model = Vist2Model(cfg)
    try:
        model.load_state_dict(module)
    except RuntimeError as exc:
        first = "; ".join(str(exc).splitlines()[1:4])
        raise CheckpointError(f"{tag_dir / MODEL_FILE} does not fit the configured model "
                              f"(another size or vocabulary?): {first}") from None
    return model.eval(), tok, cfg
