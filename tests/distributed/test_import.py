"""tools/import_hf.py: a random Qwen3ForCausalLM and a SigLIP vision tower (its 4 x 4 position
grid resized to our 4 x 8) become a checkpoint our model reproduces Qwen3's logits from, and
that tensor-parallel and single-process training start from identically."""
import pytest
import torch
from transformers import Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from megatron_vist2.config import load_config, validate
from megatron_vist2.convert import qwen3
from tests.conftest import tiny_overrides
from tests.distributed.runs import metrics, tool, train

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)


def test_imported_model_matches_qwen3_and_starts_any_layout(dist_env, tiny_data, tmp_path):
    from megatron_vist2.inference.load import load_for_inference
    from tests.inference_helpers import causal_text_batch
    overrides = tiny_overrides(tiny_data, "model.llm.num_kv_heads=1")      # TP2 replicates K/V
    cfg = validate(load_config("tiny-cpu", overrides), 1)
    torch.manual_seed(6)
    hf = Qwen3ForCausalLM(qwen3.hf_config(cfg)).eval()
    hf.save_pretrained(str(tmp_path / "qwen3"))
    v = cfg.model.vision
    SiglipVisionModel(SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.ffn_hidden_size,
                                         num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                                         num_channels=v.num_channels, image_size=64, patch_size=16)
                      ).save_pretrained(str(tmp_path / "siglip"))
    log = tool("tools/import_hf.py", "--preset", "tiny-cpu", *overrides, "--qwen3", str(tmp_path / "qwen3"),
                "--siglip", str(tmp_path / "siglip"), "--out", str(tmp_path / "init"))
    assert "resized to our 4 x 8 patch grid" in log and "front.aligner" in log

    model, tok, _ = load_for_inference(str(tmp_path / "init"))
    ids = tok.encode("Fellow-Citizens of the Senate and of the House of Representatives.")
    batch = causal_text_batch(ids, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    with torch.no_grad():
        ours = model(batch)[:, 0, :cfg.model.llm.vocab_size]
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4

    def eval_loss(out, *extra, ranks):
        train(tiny_data, out, "train.steps=1", "model.llm.num_kv_heads=1",
              f"checkpoint.init_from={tmp_path / 'init'}", *extra, ranks=ranks)
        return next(e["eval/loss"] for e in metrics(out) if e["step"] == 0 and "eval/loss" in e)
    single = eval_loss(tmp_path / "tp1", ranks=1)
    tp2 = eval_loss(tmp_path / "tp2", "parallel.tensor_parallel=2", ranks=2)
    assert abs(single - tp2) <= 1e-5
