"""The exported model's shared code is generated from our source and the rest is tied to it
(convert/bundle.py), in the fast tier: the copy check fails on planted violations; the exported
encoder, plain forward and generate equal our model and engine on the same weights; nothing in
the exported model or the engine creates a tensor without a device (a GPU run would mix devices)."""
import shutil

import pytest
import torch

from megatron_vist2.convert import bundle


# ------------------------------------------------------------------ the check itself (no model)
def test_remote_code_is_clean_and_the_check_catches_planted_copies(tmp_path):
    assert bundle.check_remote_code() == []
    remote = tmp_path / "remote"
    shutil.copytree(bundle.REMOTE_CODE, remote)
    assert bundle.check_remote_code(remote) == []
    gen = remote / "generation_vist2.py"
    # a copy of the slot arithmetic under its own name
    gen.write_text(gen.read_text() + "\n\ndef max_position(n, L, m):\n    return n // L * m\n")
    found = bundle.check_remote_code(remote)
    assert len(found) == 1 and "'max_position'" in found[0] and "inference/cache.py" in found[0]
    shutil.copy(bundle.REMOTE_CODE / "generation_vist2.py", gen)
    # a re-implemented mask under a new name, and a copied constant
    modeling = remote / "modeling_vist2.py"
    modeling.write_text(modeling.read_text() + "\n\nTEXT = 0\n\n\ndef vist2_mask(doc, chunk, kind, readback):\n"
                        "    return (chunk[:, :, None] >= chunk[:, None, :])[:, None]\n")
    found = bundle.check_remote_code(remote)
    assert len(found) == 2
    assert "'TEXT'" in found[0] and "models/attention.py" in found[0]
    assert "'vist2_mask' is not in DECLARED" in found[1]
    # a new method on a declared class is not declared either
    modeling.write_text(modeling.read_text().replace(
        "    def encode_images(", "    def slots(self, n):\n        return n\n\n    def encode_images(", 1))
    assert any("'Vist2ForCausalLM.slots' is not in DECLARED" in f for f in bundle.check_remote_code(remote))


def test_a_tie_must_name_a_test_that_exists(monkeypatch):
    ties = {**bundle.DECLARED["modeling_vist2.py"],
            "Vist2Aligner.forward": "tests/unit/test_export_copies.py::test_no_such_test"}
    monkeypatch.setitem(bundle.DECLARED, "modeling_vist2.py", ties)
    assert bundle.check_remote_code() == ["DECLARED['modeling_vist2.py']['Vist2Aligner.forward'] names "
                                          "tests/unit/test_export_copies.py::test_no_such_test, which does not exist"]


def test_bundled_copies_are_generated_and_an_edited_copy_is_caught(tmp_path):
    names = bundle.write_bundle(tmp_path)
    assert sorted(names) == sorted(bundle.BUNDLED.values())
    assert bundle.check_export(tmp_path) == []
    cache = (tmp_path / "vist2_kv_cache.py").read_text()
    assert "from .vist2_attention import CAUSAL" in cache and "from ..models" not in cache
    assert "Context = Literal['vist2', 'text', 'window']" in (tmp_path / "vist2_packing.py").read_text()
    (tmp_path / "vist2_kv_cache.py").write_text(cache.replace("full * m - 1", "full * m"))
    (tmp_path / "vist2_decoder.py").unlink()
    found = bundle.check_export(tmp_path)
    assert len(found) == 2 and "vist2_kv_cache.py: differs" in found[0] and "vist2_decoder.py: missing" in found[1]


def test_a_package_import_that_is_not_bundled_fails_by_name(monkeypatch):
    monkeypatch.setitem(bundle.BUNDLED, "inference/engine.py", "vist2_engine.py")
    with pytest.raises(RuntimeError, match="inference/engine.py: 'from ..config import Config' imports "
                                           "config.py, which the export does not bundle"):
        bundle.bundled_source("inference/engine.py")


# ------------------------------------------------------------------ the exported model vs ours
@pytest.fixture(scope="module")
def exported(dist_env, tiny_data, tmp_path_factory):
    from transformers import AutoModelForCausalLM
    from megatron_vist2.convert.vist2 import export_vist2
    from tests.conftest import tiny_model
    cfg, tok, ds, model = tiny_model(tiny_data, "model.init_std=0.1", "model.llm.tie_embeddings=false",
                                     "data.seq_length=1024")
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, cfg.data.tokenizer, str(tmp_path_factory.mktemp("copies") / "vist2"),
                       shard_bytes=1 << 20)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    return cfg, tok, ds, model, out, hf


def test_export_carries_the_generated_copies(exported):
    out = exported[4]
    assert bundle.check_export(out) == []
    assert bundle.check_remote_code(out) == []


def test_exported_encoder_equals_ours(exported):
    from tests.inference_helpers import streams
    cfg, tok, ds, model, _, hf = exported
    L = cfg.model.chunk.text_tokens
    chunks = [s[i:i + L] for s in streams(ds, [3 * L], seed=2) for i in range(0, 3 * L, L)]
    images = hf.render(chunks)
    with torch.no_grad():
        assert (hf.encode_images(images) - model.front.encode_images(images)).abs().max().item() <= 1e-5


def test_exported_plain_forward_equals_teacher_forced(exported):
    """The plain forward (lm-eval's call) lays rows out as training does: logits[t] predicts token
    t + 1 as our training forward does; a left-padded batch, one row ending on a full chunk."""
    from tests.inference_helpers import streams, teacher_forced
    cfg, tok, ds, model, _, hf = exported
    L = cfg.model.chunk.text_tokens
    rows = streams(ds, [2 * L + 5, 2 * L], seed=3)
    n = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        got = hf(ids, attention_mask=mask).logits
    V = tok.vocab_size
    for b, r in enumerate(rows):
        pad = n - len(r)
        ref = teacher_forced(model, ds, r + [0])          # + a next token: the last one's predictor too
        assert not got[b, :pad].any()
        worst = max((got[b, pad + t, :V] - ref[t + 1]).abs().max().item() for t in range(len(r)))
        assert worst <= 1e-4, (b, worst)


def test_exported_generate_equals_engine(exported):
    """Greedy, a left-padded batch whose rows sit at different chunk phases, across chunk
    boundaries: the exported generate gives the engine's tokens (the same decoder and cache
    source, transformers' Qwen3 as the backbone)."""
    from megatron_vist2.inference import SamplingParams, Vist2Engine
    from tests.inference_helpers import streams
    cfg, tok, ds, model, _, hf = exported
    L = cfg.model.chunk.text_tokens
    prompts = streams(ds, [L + 7, 2 * L + 30], seed=5)
    new = L + 5
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=5 * L, batch_size=2, prefill_block=16)
    ours = engine.generate(prompts, SamplingParams(max_new_tokens=new))
    n = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (n - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new)
    assert [r[n:] for r in out.tolist()] == ours


def test_nothing_creates_a_tensor_without_a_device(exported):
    """Under ``torch.device('meta')`` every factory call without ``device=`` makes a meta tensor,
    and mixing it with the CPU model's tensors raises (as a CPU tensor would on CUDA): the
    exported forward and generate and the engine in its three modes run and give the same
    outputs as without it."""
    from megatron_vist2.inference import SamplingParams, Vist2Engine
    from tests.inference_helpers import streams
    cfg, tok, ds, model, _, hf = exported
    L = cfg.model.chunk.text_tokens
    prompt = streams(ds, [L + 3], seed=6)[0]
    ids = torch.tensor([prompt])

    def run():
        with torch.no_grad():
            logits = hf(ids).logits
        out = [logits, hf.generate(ids, max_new_tokens=L)]
        for compress in (True, False):
            engine = Vist2Engine(model, tok, cfg, compress=compress, max_context=3 * L, batch_size=2)
            out.append(engine.generate([prompt, prompt[:5]], SamplingParams(max_new_tokens=L)))
        return out

    ref = run()
    with torch.device("meta"):
        got = run()
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and got[2:] == ref[2:]
