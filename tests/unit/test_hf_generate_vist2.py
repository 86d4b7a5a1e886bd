"""The exported VIST2 model's cached generate (convert/remote_code/generation_vist2.py: the
engine's own schedule and cache, bundled, with transformers' Qwen3 as the backbone) against
megatron_vist2's engine (our megatron-core backbone): the same tokens across several chunk
boundaries for a padded batch whose rows sit at different chunk phases, greedy and sampled;
transformers' conventions (max_length, eos, stop strings, streamer); the directory surviving
save_pretrained; bad input refused by name. The fast tier's check: test_export_copies.py."""
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from megatron_vist2.convert.vist2 import export_vist2
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def setup(dist_env, tiny_data, tmp_path_factory):
    cfg, tok, ds, model = tiny_model(tiny_data, "model.init_std=0.1", "model.llm.tie_embeddings=false")
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, cfg.data.tokenizer,
                       str(tmp_path_factory.mktemp("hfgen") / "vist2"), shard_bytes=1 << 20)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    L = cfg.model.chunk.text_tokens
    prompts = [[int(t) for t in ds.indexed.tokens(0, 0, L + 7)],        # 1 chunk + 7: phase 7
               [int(t) for t in ds.indexed.tokens(1, 5, 2 * L + 30)]]   # 2 chunks + 30: phase 30
    return cfg, tok, model, out, hf, prompts


def padded(prompts, pad=0):
    """Left-padded batch and its attention mask (transformers' layout for generation)."""
    n = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def engine_tokens(setup, params):
    from megatron_vist2.inference.engine import Vist2Engine
    cfg, tok, model, _, _, prompts = setup
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=16 * cfg.model.chunk.text_tokens,
                         batch_size=len(prompts))
    return engine.generate(prompts, params)


@pytest.mark.slow                          # over ~5 s in-process: export + generate in a batch
@pytest.mark.parametrize("sampled", [False, True])
def test_cached_generate_equals_engine_in_a_batch_at_different_phases(setup, sampled):
    from megatron_vist2.inference.engine import SamplingParams
    cfg, _, _, _, hf, prompts = setup
    L = cfg.model.chunk.text_tokens
    new = 2 * L + 5                                    # row 0 crosses 3 boundaries, row 1 crosses 3
    params = SamplingParams(max_new_tokens=new, temperature=0.8 if sampled else 0.0,
                            top_p=0.9 if sampled else 1.0, seed=7)
    ours = engine_tokens(setup, params)
    ids, mask = padded(prompts)
    kw = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=0, seed=7) if sampled else {}
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, **kw)
    assert out.shape == (2, ids.shape[1] + new)
    assert torch.equal(out[:, :ids.shape[1]], ids)                       # the input is kept as given
    assert [r[ids.shape[1]:] for r in out.tolist()] == ours
    if sampled:                                                          # transformers' global seed too
        torch.manual_seed(7)
        again = hf.generate(ids, attention_mask=mask, max_new_tokens=new, **{**kw, "seed": None})
        assert [r[ids.shape[1]:] for r in again.tolist()] == ours
        assert ours != engine_tokens(setup, SamplingParams(max_new_tokens=new, temperature=0.8, top_p=0.9,
                                                           seed=8))     # the seed matters


@pytest.mark.slow                          # over ~5 s in-process: export + generate
def test_max_length_eos_stop_strings_and_streamer(setup):
    from transformers.generation.streamers import BaseStreamer
    cfg, tok, _, _, hf, prompts = setup
    ids, mask = padded(prompts)
    S = ids.shape[1]
    greedy = hf.generate(ids, attention_mask=mask, max_new_tokens=12)
    assert hf.generate(ids, attention_mask=mask, max_length=S + 5).tolist() == greedy[:, :S + 5].tolist()
    # eos: row 0 stops at its 3rd token, row 1 runs on; the finished row is padded
    eos = int(greedy[0, S + 2])
    if eos in greedy[1, S:].tolist() or eos in greedy[0, S:S + 2].tolist():
        pytest.skip("the chosen eos token occurs elsewhere in this greedy output")
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=1)
    assert out[0, S:].tolist() == greedy[0, S:S + 3].tolist() + [1] * 9
    assert out[1].tolist() == greedy[1].tolist()
    # a stop string: generation ends with the first token whose text completes it
    row = greedy[1, S:].tolist()
    text = tok.decode(row)
    stop = text[len(tok.decode(row[:4])):][:3]
    assert stop.strip()
    first = next(i for i in range(1, len(row) + 1) if stop in tok.decode(row[:i]))
    single = hf.generate(torch.tensor([prompts[1]]), max_new_tokens=12, stop_strings=stop)
    assert single[0, len(prompts[1]):].tolist() == row[:first]

    class Collect(BaseStreamer):
        def __init__(self):
            self.parts = []

        def put(self, value):
            self.parts.append(value.tolist())

        def end(self):
            self.parts.append("end")
    streamer = Collect()
    single = hf.generate(torch.tensor([prompts[0]]), max_new_tokens=4, streamer=streamer)
    assert streamer.parts == [[prompts[0]]] + [[t] for t in single[0, len(prompts[0]):].tolist()] + ["end"]


def test_directory_survives_save_pretrained(setup, tmp_path, monkeypatch):
    _, _, _, out, _, prompts = setup
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)                      # the original stays for the other tests
    model = AutoModelForCausalLM.from_pretrained(str(copy), trust_remote_code=True, local_files_only=True)
    moved = tmp_path / "moved"
    model.save_pretrained(str(moved))
    shutil.rmtree(copy)
    monkeypatch.chdir(tmp_path)                     # loaded by a relative path, as a user types it (the
    again = AutoModelForCausalLM.from_pretrained("moved", trust_remote_code=True, local_files_only=True)
    # font was looked up relative to the renderer's own directory before)
    ids = torch.tensor([prompts[1]])
    ref = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True)
    assert again.generate(ids, max_new_tokens=6).tolist() == ref.generate(ids, max_new_tokens=6).tolist()


def test_bad_input_is_refused_by_name(setup, tmp_path):
    from megatron_vist2.data.tokenizer import train_sentencepiece
    cfg, _, _, out, hf, prompts = setup
    ids = torch.tensor([prompts[0]])
    for kw, name in ((dict(do_sample=True, temperature=0.0), "temperature"),
                     (dict(do_sample=True, top_p=1.5), "top_p"),
                     (dict(do_sample=True, top_k=-1), "top_k"),
                     (dict(num_beams=2), "num_beams"),
                     (dict(no_such_option=1), "no_such_option")):
        with pytest.raises((ValueError, TypeError), match=name):
            hf.generate(ids, max_new_tokens=2, **kw)
    limit = hf.config.text_config.max_position_embeddings
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    too_long = torch.zeros(1, (limit // m + 1) * L, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        hf.generate(too_long, max_new_tokens=1)

    broken = tmp_path / "no_font"
    shutil.copytree(out, broken)
    (broken / "DejaVuSansMono.ttf").unlink()
    model = AutoModelForCausalLM.from_pretrained(str(broken), trust_remote_code=True, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="DejaVuSansMono.ttf"):
        model.generate(torch.tensor([prompts[1]]), max_new_tokens=1)

    other = tmp_path / "other_tok"
    shutil.copytree(out, other)
    import string
    lines = [" ".join(string.ascii_letters[i:i + 7] for i in range(0, 40, 3)), "the quick brown fox"] * 30
    train_sentencepiece(lines, str(tmp_path / "small.model"), 320, model_type="bpe")
    shutil.copy(tmp_path / "small.model", other / "tokenizer.model")
    model = AutoModelForCausalLM.from_pretrained(str(other), trust_remote_code=True, local_files_only=True)
    with pytest.raises(ValueError, match="tokenizer .* 320 entries"):
        model.generate(torch.tensor([prompts[1]]), max_new_tokens=1)
