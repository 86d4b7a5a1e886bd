"""A tokenizer's special tokens, whichever kind it is (sentencepiece model or Hugging Face
directory): what an exported config.json records and where generation stops."""
from __future__ import annotations

from typing import Dict, Optional


def special_token_ids(tok) -> Dict[str, int]:
    """{"bos_token_id", "eos_token_id", "pad_token_id"}: those the tokenizer defines (>= 0)."""
    out = {}
    sp, hf = getattr(tok, "sp", None), getattr(tok, "tok", None)
    for name in ("bos", "eos", "pad"):
        if sp is not None:
            value = getattr(sp, f"{name}_id")()
        elif hf is not None:
            value = getattr(hf, f"{name}_token_id", None)
        else:
            value = None
        if value is not None and value >= 0:
            out[f"{name}_token_id"] = int(value)
    return out


def eos_id(tok) -> Optional[int]:
    return special_token_ids(tok).get("eos_token_id")


def chat_template(tok) -> Optional[str]:
    """The Hugging Face chat template, None for a tokenizer without one (sentencepiece)."""
    hf = getattr(tok, "tok", None)
    return getattr(hf, "chat_template", None) if hf is not None else None
