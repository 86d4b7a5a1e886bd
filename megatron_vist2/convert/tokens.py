"""A tokenizer's special tokens, whichever kind it is (sentencepiece model or Hugging Face
directory): what an exported config.json records and where generation stops; and the tokenizer
files of every export (``write_hf_tokenizer``), checked with transformers' ``AutoTokenizer``
against the training tokenizer on a mixed sample before the export is renamed into place
(``check_hf_tokenizer``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import TokenizerError


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


# ------------------------------------------------------------------ the exported tokenizer
# What every export's tokenizer is checked on: English, accents, digits, CJK, whitespace runs.
MIXED_SAMPLE = ("Fellow citizens, the café's naïve résumé cost $1,790.25 in 2024 (№ 3).\n"
                "  Two  spaces,\ttabs\t\tand\n\n\nblank lines;   中文字符 日本語のテキスト 한국어 end.  ")
SP_FILE = "tokenizer.model"            # a sentencepiece model in an export (config.json tokenizer_file)
HF_CONFIG = "tokenizer_config.json"
HF_TOKENIZER_JSON = "tokenizer.json"


def _sentencepiece_tokenizer_json(model_file: Path):
    """A ``tokenizers.Tokenizer`` that encodes like the sentencepiece model (its normalizer,
    dummy prefix, whitespace rules, byte fallback, user-defined pieces): transformers' own builder
    for sentencepiece protos (``SpmConverter.build_tokenizer_from_spm_proto``)."""
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type == 1:         # unigram: (piece, score) by id
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:                                          # bpe: piece -> id, merges ranked by score
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    built = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if built is None:
        raise TokenizerError(f"{model_file}: a sentencepiece model of type "
                             f"{proto.trainer_spec.model_type} cannot be written as tokenizer.json "
                             f"(unigram and bpe can)")
    return built


def write_hf_tokenizer(tokenizer, out_dir: Path, sp_name: str = SP_FILE) -> List[str]:
    """Write into ``out_dir`` the files with which ``AutoTokenizer.from_pretrained(out_dir)`` is
    the training tokenizer (whatever model_type the directory's config.json names); -> the names.

    A sentencepiece model: the model itself (``sp_name``), tokenizer.json built from it and a
    tokenizer_config.json naming PreTrainedTokenizerFast (without it, transformers picks the
    tokenizer class of config.json's model_type: a byte-level Qwen2 BPE for a Qwen3 backbone).
    A Hugging Face tokenizer: its files (data/tokenizer.py ``tokenizer_files``), with the class
    it loads as written into tokenizer_config.json when that file does not name one."""
    from ..data.tokenizer import tokenizer_files
    out_dir = Path(out_dir)
    src = Path(tokenizer.path)
    sp = getattr(tokenizer, "sp", None)
    if sp is None:
        names = []
        for f in tokenizer_files(src):
            shutil.copy(f, out_dir / f.name)
            names.append(f.name)
        config_path = out_dir / HF_CONFIG
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if not config.get("tokenizer_class"):
            config["tokenizer_class"] = type(tokenizer.tok).__name__
            config_path.write_text(json.dumps(config, indent=1))
            names += [] if HF_CONFIG in names else [HF_CONFIG]
        return names
    shutil.copy(src, out_dir / sp_name)
    _sentencepiece_tokenizer_json(src).save(str(out_dir / HF_TOKENIZER_JSON))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False}
    for name in ("bos", "eos", "unk", "pad"):
        i = getattr(sp, f"{name}_id")()
        if i >= 0:
            config[f"{name}_token"] = sp.id_to_piece(i)
    (out_dir / HF_CONFIG).write_text(json.dumps(config, indent=1))
    return [sp_name, HF_TOKENIZER_JSON, HF_CONFIG]


def check_hf_tokenizer(out_dir: Path, tokenizer, sample: str = MIXED_SAMPLE) -> None:
    """``AutoTokenizer.from_pretrained(out_dir)`` must be ``tokenizer``: the same size, the same
    ids and the same decoded text on ``sample``. TokenizerError naming what differs."""
    from transformers import AutoTokenizer
    try:
        hf = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True, trust_remote_code=False)
    except Exception as exc:    # noqa: BLE001 - any failure of transformers' loader is reported
        raise TokenizerError(f"AutoTokenizer cannot load the tokenizer written to {out_dir} "
                             f"({type(exc).__name__}: {exc})") from None
    want = tokenizer.encode(sample)
    got = hf.encode(sample, add_special_tokens=False)
    problems = []
    if len(hf) != tokenizer.vocab_size:
        problems.append(f"{len(hf)} entries instead of {tokenizer.vocab_size}")
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        problems.append(f"other ids on the sample text ({len(got)} tokens instead of {len(want)}, first "
                        f"difference at token {at})")
    elif hf.decode(got, clean_up_tokenization_spaces=False) != tokenizer.decode(want):
        problems.append("another decoded text for the same ids")
    if problems:
        raise TokenizerError(f"AutoTokenizer.from_pretrained('{out_dir}') loads {type(hf).__name__}, which is "
                             f"not the training tokenizer {tokenizer.path}: {'; '.join(problems)}. "
                             f"The export is refused rather than written with a tokenizer that silently "
                             f"differs (report this with the tokenizer)")
