"""Build an inference model from one of our checkpoints: any training layout (TP/PP/DP, ZeRO
0-3) or a consolidated checkpoint, read as full weights (checkpoint/sources.py)."""
from __future__ import annotations

from typing import Iterable, Tuple

from ..config import (Config, apply_overrides, config_from_dict, recorded_config,
                      tokenizer_size_problem, validate)
from ..checkpoint.reshard import load_weights
from ..checkpoint.sources import open_checkpoint
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..errors import CheckpointError
from ..models.vist2 import Vist2Model
from ..checkpoint.tokenizer_record import find_tokenizer


def load_for_inference(checkpoint: str, overrides: Iterable[str] = (),
                       tokenizer_path: str = None) -> Tuple[Vist2Model, Tokenizer, Config]:
    source = open_checkpoint(checkpoint)
    recorded_config(source.config, source.step_dir / "config.yaml")     # a model this version knows
    data = dict(source.config)
    data["parallel"] = {**data.get("parallel", {}), "tensor_parallel": 1, "pipeline_parallel": 1,
                        "sequence_parallel": False}      # one process holds the whole model
    cfg = validate(config_from_dict(apply_overrides(data, overrides)))
    want = source.client.get("tokenizer_sha256")
    # the checkpoint's stored copy first: the config's path may be relative to another directory
    tok = load_tokenizer(find_tokenizer(source.step_dir, cfg.data.tokenizer, want, tokenizer_path,
                                         identify=lambda p: load_tokenizer(p).sha256))
    if want and tok.sha256 != want:
        raise CheckpointError(f"tokenizer mismatch: {tok.path} (sha256 {tok.sha256[:12]}..) is not "
                              f"the tokenizer {source.step_dir} was trained with ({want[:12]}..)")
    problem = tokenizer_size_problem(cfg, tok.vocab_size, tok.path)
    if problem:
        raise CheckpointError(f"{problem} (the checkpoint's config)")
    model = Vist2Model(cfg)
    load_weights(model, source, log=lambda *_: None)
    return model.eval(), tok, cfg
