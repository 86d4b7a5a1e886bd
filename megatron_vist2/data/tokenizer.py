"""Tokenizers behind one interface. Here: sentencepiece models trained by
``tools/train_tokenizer.py`` (the data-tools issue adds Hugging Face tokenizer directories)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, List

import sentencepiece as spm
from ..errors import TokenizerError


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    def __init__(self, path: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer '{path}' not found: train one with "
                                 f"tools/train_tokenizer.py or set data.tokenizer")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"tokenizer '{path}' is not a sentencepiece model ({exc})") from None
        self.sha256 = file_sha256(self.path)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> List[int]:
        return self.sp.EncodeAsIds(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])


def train_sentencepiece(texts: Iterable[str], output: str, vocab_size: int,
                        model_type: str = "unigram", user_symbols: Iterable[str] = ()) -> Path:
    """Train on an iterator of texts (one sentence per line) and write ``output`` atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        prefix = os.path.join(tmp, "spm")
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, byte_fallback=True,
                max_sentence_length=1 << 14, input_sentence_size=300_000,
                shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
                user_defined_symbols=list(user_symbols), minloglevel=2)
        except RuntimeError as exc:   # e.g. vocab smaller than the corpus's character set
            reason = str(exc).split("] ", 1)[-1]
            raise TokenizerError(f"sentencepiece training for {output} failed: {reason}") from None
        os.replace(prefix + ".model", output)
    return output
