"""Tokenizers behind one interface: a sentencepiece ``.model`` file (trained by
``tools/train_tokenizer.py``) or a Hugging Face tokenizer directory (``tokenizer.json`` etc.,
loaded offline). ``load_tokenizer(path)`` picks by what the path is."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import sentencepiece as spm

from ..errors import TokenizerError


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Files of a Hugging Face model directory that are not its tokenizer. A tokenizer given as a model
# directory (an import from one, an export of ours) is the rest: hashed, stored in checkpoints and
# exported without weights, model config, code or fonts (a tokenizer-only directory: all its files).
NOT_TOKENIZER = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                 "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.gguf", "*.onnx", "*.msgpack", "*.h5",
                 "*.py", "*.ttf", "*.otf", "*.ttc")


def tokenizer_files(directory) -> List[Path]:
    """The tokenizer's files in a Hugging Face directory (sorted; see NOT_TOKENIZER)."""
    return [f for f in sorted(Path(directory).iterdir())
            if f.is_file() and not any(f.match(p) for p in NOT_TOKENIZER)]


class Tokenizer:
    """The interface: ``encode``, ``decode``, ``vocab_size``, ``sha256`` (identifies the files)."""
    path: Path
    sha256: str

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str):
        self.path = Path(path)
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


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory, loaded with ``local_files_only`` (never the hub)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer
        self.path = Path(path)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; each is reported by file
            raise TokenizerError(f"'{path}' is not a Hugging Face tokenizer directory "
                                 f"({type(exc).__name__}: {exc})") from None
        h = hashlib.sha256()
        for f in tokenizer_files(self.path):
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
        self.sha256 = h.hexdigest()

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False,
                               clean_up_tokenization_spaces=False)


def tokenizer_from_gguf(gguf_file: str, out_dir: str) -> Path:
    """Write the vocabulary inside a GGUF file (a llama.cpp model or vocab-only file) as a Hugging
    Face tokenizer directory (tokenizer.json, tokenizer_config.json, the chat template if the
    file has one): transformers' GGUF reader (needs the ``gguf`` package), offline; atomic."""
    from transformers import AutoTokenizer
    src, out = Path(gguf_file), Path(out_dir)
    if not src.is_file():
        raise TokenizerError(f"GGUF file '{src}' not found")
    if out.exists():
        raise TokenizerError(f"'{out}' exists: choose a new directory for the tokenizer")
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
        os.makedirs(tmp)                  # so the context manager's cleanup finds its directory
    return out


def load_tokenizer(path: str) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        return HFTokenizer(path)
    if p.is_file():
        return SentencePieceTokenizer(path)
    raise TokenizerError(f"tokenizer '{path}' not found: give a sentencepiece .model file (train "
                         f"one with tools/train_tokenizer.py) or a Hugging Face tokenizer directory "
                         f"(data.tokenizer)")


MAX_SENTENCE_BYTES = 1 << 14     # sentencepiece's max_sentence_length: longer lines it drops


def split_long_lines(lines: Iterable[str], max_bytes: int = MAX_SENTENCE_BYTES,
                     stats: Optional[dict] = None) -> Iterator[str]:
    """Lines of at most ``max_bytes`` UTF-8 bytes: a longer line is cut after the last space of
    each window (else at a character boundary), so sentencepiece drops nothing. ``stats`` (if
    given) counts 'lines', 'split' (lines that were longer) and 'pieces' (what they became)."""
    stats = {} if stats is None else stats
    for key in ("lines", "split", "pieces"):
        stats.setdefault(key, 0)
    for line in lines:
        stats["lines"] += 1
        data = line.encode("utf-8")
        if len(data) <= max_bytes:
            yield line
            continue
        stats["split"] += 1
        while data:
            cut = len(data) if len(data) <= max_bytes else max_bytes
            while cut < len(data) and data[cut] & 0xC0 == 0x80:   # not inside a character
                cut -= 1
            space = data.rfind(b" ", 0, cut)
            if cut < len(data) and space > cut // 2:
                cut = space + 1
            piece, data = data[:cut].decode("utf-8"), data[cut:]
            if piece.strip():
                stats["pieces"] += 1
                yield piece


def train_sentencepiece(texts: Iterable[str], output: str, vocab_size: int,
                        model_type: str = "unigram", user_symbols: Iterable[str] = (),
                        num_threads: int = os.cpu_count() or 1, seed: int = 1,
                        stats: Optional[dict] = None) -> Path:
    """Train on an iterator of texts (one sentence per line) and write ``output`` atomically.
    Lines longer than sentencepiece's limit are split, not dropped (``split_long_lines``).
    The file is byte-identical from run to run (fixed seed; the temporary path sentencepiece
    records as ``model_prefix`` is blanked), so its sha256 identifies the vocabulary."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        prefix = os.path.join(tmp, "spm")
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=split_long_lines(texts, MAX_SENTENCE_BYTES, stats),
                model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, byte_fallback=True,
                max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=300_000,
                shuffle_input_sentence=True, num_threads=num_threads,
                user_defined_symbols=list(user_symbols), minloglevel=2)
        except RuntimeError as exc:   # e.g. vocab smaller than the corpus's character set
            reason = str(exc).split("] ", 1)[-1].strip() or f"{exc!r} (check the vocabulary size)"
            raise TokenizerError(f"sentencepiece training for {output} failed: {reason}") from None
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(prefix + ".model").read_bytes())
        proto.trainer_spec.model_prefix = ""
        Path(prefix + ".model").write_bytes(proto.SerializeToString())
        os.replace(prefix + ".model", output)
    return output
