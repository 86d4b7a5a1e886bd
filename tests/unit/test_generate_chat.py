"""tools/generate's --chat (megatron_vist2/generate.py) on a checkpoint whose tokenizer has a chat
template (SmolLM2's, a real Hugging Face tokenizer): the engine receives exactly the ids that
transformers' own apply_chat_template gives for a user turn plus the assistant's generation
prompt. (The refusal without a template is in tests/bad_input.)"""
import torch

from tests.conftest import tiny_overrides


def test_chat_wraps_the_prompt_in_the_tokenizers_template(dist_env, tiny_data, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer
    from megatron_vist2 import generate
    from megatron_vist2.checkpoint.sources import write_consolidated
    from megatron_vist2.config import config_to_dict, load_config, validate
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.inference import Vist2Engine
    from megatron_vist2.models import Vist2Model
    from megatron_vist2.parallel.distributed import init_distributed
    from tests.unit.test_real_tokenizers import real_tokenizer_dir
    TOKENIZER = real_tokenizer_dir("smollm2")       # converted here if no test has done it yet
    tok = load_tokenizer(str(TOKENIZER))
    cfg = validate(load_config("tiny-cpu", tiny_overrides(
        tiny_data, f"model.llm.vocab_size={tok.vocab_size}", f"data.tokenizer={TOKENIZER}",
        "model.llm.hidden_size=32", "model.llm.ffn_hidden_size=64", "model.llm.num_heads=2",
        "model.llm.num_kv_heads=1", "model.llm.head_dim=16", "model.llm.num_layers=1")[1:]))
    torch.manual_seed(0)
    params = dict(Vist2Model(cfg).named_parameters())
    client = {"step": 1, "consumed_samples": 0, "tokenizer_sha256": tok.sha256}
    ckpt = write_consolidated(str(tmp_path / "ckpt"), "step_0000001",
                              ((n, "param", p.detach()) for n, p in params.items()),
                              {**client, "layout": None}, config_to_dict(cfg), {"client": client},
                              log=lambda *_: None, tokenizer=str(TOKENIZER))
    seen = []
    real = Vist2Engine.generate

    def spy(self, prompts, *args, **kwargs):
        seen.extend(prompts)
        return real(self, prompts, *args, **kwargs)
    monkeypatch.setattr(Vist2Engine, "generate", spy)
    try:
        generate.main(["--checkpoint", str(ckpt), "--prompt", "What is the capital of France?", "--chat",
                       "--baseline", "--max-new-tokens", "2", "--ignore-eos"])
    finally:
        init_distributed(1, 1)        # the tool shuts its process group down; the session's is restored
    reference = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True).apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        tokenize=True, return_dict=False)
    assert seen == [list(reference)]
    text = tok.decode(seen[0])
    assert "What is the capital of France?" in text and text != "What is the capital of France?"
    assert "generated 2" in capsys.readouterr().out
