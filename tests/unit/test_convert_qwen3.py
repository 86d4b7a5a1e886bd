"""The backbone <-> transformers' Qwen3ForCausalLM, proven by logits (fp32, no network), and an
import -> export round trip that reproduces the original files bit for bit."""
import pytest
import torch
from transformers import Qwen3ForCausalLM

from megatron_vist2.convert.qwen3 import export_backbone, hf_config, import_backbone
from megatron_vist2.errors import CheckpointError
from tests.conftest import safetensors_tensors, tiny_model
from tests.inference_helpers import causal_text_batch


def ours_logits(model, cfg, ids):
    batch = causal_text_batch(ids, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    with torch.no_grad():
        return model(batch)[:, 0, :cfg.model.llm.vocab_size]


@pytest.mark.parametrize("tied,multiple", [(True, 128), (False, 128), (True, 96), (False, 96)],
                         ids=["tied", "untied", "tied-padded", "untied-padded"])
def test_export_loads_in_transformers_with_equal_logits(dist_env, tiny_data, tmp_path, tied, multiple):
    """multiple 96: the 512-token vocabulary is built as 576 rows; export drops the 64 padding rows."""
    cfg, tok, ds, model = tiny_model(tiny_data, "model.init_std=0.1", f"model.llm.tie_embeddings={tied}",
                                     f"model.llm.make_vocab_size_divisible_by={multiple}")
    from megatron_vist2.config import padded_vocab_size
    assert padded_vocab_size(cfg) == (576 if multiple == 96 else 512)
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_backbone(state.__getitem__, cfg, str(tmp_path / "hf"), shard_bytes=1 << 20)   # several shards
    assert len(list(out.glob("*.safetensors"))) > 1
    hf = Qwen3ForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    ids = [int(t) for t in ds.indexed.tokens(0, 0, 60)]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (ours_logits(model, cfg, ids) - theirs).abs().max().item() <= 1e-4


def test_import_from_transformers_gives_equal_logits(dist_env, tiny_data, tmp_path):
    """Into a padded vocabulary (576 rows for 512 tokens): the padding rows are added as zeros."""
    cfg, tok, ds, model = tiny_model(tiny_data, "model.llm.tie_embeddings=false",
                                     "model.llm.make_vocab_size_divisible_by=96")
    torch.manual_seed(5)
    hf = Qwen3ForCausalLM(hf_config(cfg)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    backbone = import_backbone(str(tmp_path / "hf"), cfg)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith(("front.vision", "front.aligner")) or
                                  k.endswith("_extra_state") for k in missing)
    ids = [int(t) for t in ds.indexed.tokens(1, 0, 60)]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (ours_logits(model, cfg, ids) - theirs).abs().max().item() <= 1e-4
    wrong = tiny_model(tiny_data, "model.llm.tie_embeddings=false", "model.llm.num_layers=2")[0]
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        import_backbone(str(tmp_path / "hf"), wrong)


def test_qwen3_import_export_round_trip_is_bit_identical(dist_env, tiny_data, tmp_path):
    cfg, *_ = tiny_model(tiny_data, "model.llm.tie_embeddings=false")
    torch.manual_seed(4)
    Qwen3ForCausalLM(hf_config(cfg)).save_pretrained(str(tmp_path / "qwen3"))
    backbone = import_backbone(str(tmp_path / "qwen3"), cfg)
    out = export_backbone(backbone.__getitem__, cfg, str(tmp_path / "again"))
    original, again = safetensors_tensors(tmp_path / "qwen3"), safetensors_tensors(out)
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
