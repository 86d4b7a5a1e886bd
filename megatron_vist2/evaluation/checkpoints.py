"""The checkpoints one evaluation compares: the model and its optional controls, read from
what each checkpoint recorded (config, tokenizer identity), checked against each other before
any model is built.

A checkpoint's context is its ``model.context`` field (absent: ``vist2``, the default). The
controls must share the model's tokenizer (sha256), chunking (``model.chunk.text_tokens``) and
training data (``data.train_prefix``): otherwise their losses on the same targets do not
measure what the compressed history keeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..checkpoint.format import read_config_yaml, read_manifest, resolve_tag_dir
from ..config.validate import recorded_config
from ..errors import CheckpointError

ROLES = {"model": None, "text": "text", "window": "window"}    # role -> the context it must have


@dataclass
class Evaluated:
    role: str                  # "model", "text" or "window"
    flag: str                  # the command-line flag that named it
    step_dir: Path
    config: dict               # as saved
    context: str
    tokenizer_sha256: Optional[str]
    step: int

    @property
    def identity(self) -> Dict[str, object]:
        data, model = self.config.get("data", {}), self.config.get("model", {})
        return {"tokenizer sha256": self.tokenizer_sha256,
                "model.chunk.text_tokens": model.get("chunk", {}).get("text_tokens"),
                "data.train_prefix": data.get("train_prefix")}


def describe(path: str, role: str, flag: str) -> Evaluated:
    """Read one checkpoint's records (no weights); unknown contexts and wrong roles fail here."""
    if not Path(path).exists():
        raise CheckpointError(f"{flag} {path}: no such checkpoint directory")
    step_dir = resolve_tag_dir(path)
    manifest = read_manifest(step_dir)
    config = read_config_yaml(step_dir)
    try:       # the one check of recorded values (an unknown model.context stops here)
        context = recorded_config(config, step_dir / "config.yaml").model.context
    except CheckpointError as exc:
        raise CheckpointError(f"{flag}: {exc}") from None
    want = ROLES[role]
    if want is not None and context != want:
        raise CheckpointError(f"{flag} {step_dir}: expected a checkpoint with model.context={want}, "
                              f"it has model.context={context}; pass the {want} control here")
    return Evaluated(role, flag, step_dir, config, context, manifest.get("tokenizer_sha256"),
                     int(manifest.get("step", 0)))


def check_identities(model: Evaluated, controls: List[Evaluated]) -> None:
    """The controls must have been trained like the model: name every difference."""
    for c in controls:
        diffs = [f"{k}: {model.flag} {v!r}, {c.flag} {c.identity[k]!r}"
                 for k, v in model.identity.items() if v != c.identity[k]]
        if diffs:
            raise CheckpointError(f"{c.flag} {c.step_dir} was not trained like {model.step_dir}:\n  - "
                                  + "\n  - ".join(diffs) + "\ntrain the control with the model's "
                                  "tokenizer, chunking and data (only model.context differs)")
