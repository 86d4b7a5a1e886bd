"""A model whose embedding has more rows than its tokenizer has pieces (an imported Hugging Face
model: Qwen3 has 151,936 rows for 151,669 pieces). The Qwen tokenizer here is the vocab GGUF's
(tests/unit/test_real_tokenizers.py) without the "[PAD...]" entries llama.cpp adds to fill the
rows: 151,646 pieces, a tiny model with 151,936 rows. The start-up rule accepts it only when
declared (model.llm.tokenizer_vocab_size) and still refuses a wrong tokenizer by name; training
steps; the extra rows are never sampled by the engine, the exported model's generate or its
plain forward, even when their logits are the largest (checked by making them so)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_vist2.config import ConfigError, load_config, tokenizer_size_problem, validate
from tests.conftest import REPO, tiny_overrides

ROWS = 151936
TINY = ["model.llm.hidden_size=32", "model.llm.ffn_hidden_size=64", "model.llm.num_heads=2",
        "model.llm.num_kv_heads=1", "model.llm.head_dim=16", "model.llm.num_layers=2",
        "model.init_std=0.1", "model.llm.tie_embeddings=false"]


def config(data, *extra):
    return validate(load_config("tiny-cpu", tiny_overrides(data, *extra)[1:]))


def test_the_rule(tiny_data):
    """Equal sizes pass; a smaller tokenizer only when declared, with its exact size; a larger one
    never; the declaration itself cannot exceed the rows."""
    plain = config(tiny_data, f"model.llm.vocab_size={ROWS}")
    assert tokenizer_size_problem(plain, ROWS, "tok") is None
    assert "model.llm.tokenizer_vocab_size=151646" in tokenizer_size_problem(plain, 151646, "tok")
    assert "more than the embedding has rows" in tokenizer_size_problem(plain, ROWS + 1, "tok")
    declared = config(tiny_data, f"model.llm.vocab_size={ROWS}", "model.llm.tokenizer_vocab_size=151646")
    assert tokenizer_size_problem(declared, 151646, "tok") is None
    for wrong in (151669, ROWS, 512):
        assert "not the tokenizer the model was declared with" in tokenizer_size_problem(declared, wrong, "tok")
    with pytest.raises(ConfigError, match="model.llm.tokenizer_vocab_size .151937. must be between 1 and"):
        config(tiny_data, f"model.llm.vocab_size={ROWS}", "model.llm.tokenizer_vocab_size=151937")


@pytest.fixture(scope="module")
def qwen_pieces(tmp_path_factory):
    from megatron_vist2.data.tokenizer import load_tokenizer, tokenizer_from_gguf
    from tests.unit.test_real_tokenizers import source
    full = REPO / ".cache" / "tokenizers" / "qwen2"
    if not full.is_dir():
        path, how = source("qwen2")
        if not path.is_file():
            pytest.skip(f"Qwen vocab GGUF absent ({path}): {how}")
        tokenizer_from_gguf(str(path), str(full))
    out = tmp_path_factory.mktemp("qwen") / "tok"
    shutil.copytree(full, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if not a["content"].startswith("[PAD")]
    spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if not k.startswith("[PAD")}
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg.get("added_tokens_decoder", {}).items()
                                   if not v["content"].startswith("[PAD")}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 151646 and max(tok.encode("<|im_end|> 中文 😀")) < tok.vocab_size
    return out, tok


def test_import_declares_the_tokenizer_size(qwen_pieces, tmp_path):
    """tools/import_hf.py's overrides from a Hugging Face directory whose tokenizer is smaller
    than its embedding (Qwen3's case) declare the tokenizer's size."""
    from transformers import Qwen3Config
    from megatron_vist2.convert.qwen3 import overrides_from_hf
    path, tok = shutil.copytree(qwen_pieces[0], tmp_path / "hf"), qwen_pieces[1]
    Qwen3Config(vocab_size=ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16).save_pretrained(str(path))
    out = overrides_from_hf(str(path))
    assert f"model.llm.vocab_size={ROWS}" in out and f"model.llm.tokenizer_vocab_size={tok.vocab_size}" in out


@pytest.mark.slow                          # over ~5 s in-process: train, export, generate
def test_train_export_generate_never_sample_the_extra_rows(qwen_pieces, dist_env, tmp_path):
    from transformers import AutoModelForCausalLM
    from megatron_vist2.convert.vist2 import export_vist2
    from megatron_vist2.data.dataset import PackedVist2Dataset, collate
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.preprocess import preprocess
    from megatron_vist2.inference.engine import SamplingParams, Vist2Engine
    from megatron_vist2.models import Vist2Model
    from megatron_vist2.train import preflight
    from tests.unit.test_real_tokenizers import TEXT, two_training_steps
    path, tok = qwen_pieces
    pieces = tok.vocab_size
    preprocess([(f"d{i}", (TEXT + " ") * (3 + i)) for i in range(6)], str(path), str(tmp_path / "ds"),
               "5,1,0", progress=False)
    data = SimpleNamespace(tokenizer=str(path), train=str(tmp_path / "ds_train"), valid=str(tmp_path / "ds_valid"))
    undeclared = config(data, f"model.llm.vocab_size={ROWS}", *TINY)
    with pytest.raises(ConfigError, match=f"declare it with model.llm.tokenizer_vocab_size={pieces}"):
        preflight(undeclared)                                 # train.py's start-up rule
    cfg = config(data, f"model.llm.vocab_size={ROWS}", f"model.llm.tokenizer_vocab_size={pieces}", *TINY,
                 f"checkpoint.save_dir={tmp_path / 'ckpt'}")
    preflight(cfg)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=0)
    torch.manual_seed(0)
    model = Vist2Model(cfg)
    assert model.head.output.weight.shape[0] == ROWS
    batch = collate([ds[i] for i in range(2)])
    losses = two_training_steps(model, batch)
    assert losses[2] < losses[0]
    model.eval()
    with torch.no_grad():                 # make the extra rows win every argmax they are offered
        w = model.head.output.weight
        k = torch.arange(ROWS - pieces)      # +-1000 x the rows of 128 tokens: some |logit| is large
        w[pieces:] = 1e3 * w[k // 2 % 128] * (1.0 - 2.0 * (k % 2))[:, None]
        assert int(model(batch).argmax(-1)[batch.loss_mask.t() > 0].min()) >= pieces
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, str(path), str(tmp_path / "vist2"), shard_bytes=64 << 20)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    assert hf.language_model.lm_head.weight.shape[0] == ROWS and hf.tokenizer_vocab_size == pieces
    L = cfg.model.chunk.text_tokens
    prompt = tok.encode(TEXT)[:L + 5]
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=8 * L)
    ours = engine.generate([prompt], SamplingParams(max_new_tokens=L + 3))[0]
    assert max(ours) < pieces
    assert hf.generate(torch.tensor([prompt]), max_new_tokens=L + 3)[0, len(prompt):].tolist() == ours
    sampled = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=True, top_k=0, seed=3)
    assert int(sampled.max()) < pieces
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits
    assert logits.shape == (1, len(prompt), pieces)
    assert np.isfinite(logits.numpy()).all()
