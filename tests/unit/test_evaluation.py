"""tools/evaluate.py's measures against independent references: CER against edit distances
computed by hand, the retention R on constructed models (a VIST2 model whose aligner output is
zeroed sees no history: R close to 0 against the window control on the same hand-built weights,
for which history is worth 4.4 nats; the text control evaluated as the model: R = 1 exactly),
and the chunk tags against the packer's rows."""
import math

import numpy as np
import pytest
import torch

from tests.bad_input.conftest import write_checkpoint
from tests.conftest import tiny_model


@pytest.mark.parametrize("hyp,ref,distance", [
    ("kitten", "sitting", 3),          # k->s, e->i, +g
    ("flaw", "lawn", 2),               # -f, +n
    ("", "abc", 3), ("abc", "", 3), ("same text", "same text", 0),
    ("The nation", "The natoin", 2),   # a transposition is two substitutions
])
def test_edit_distance_is_the_hand_computed_levenshtein(hyp, ref, distance):
    from megatron_vist2.metrics.cer import edit_distance
    assert edit_distance(hyp, ref) == distance


def test_cer_counter_sums_edits_over_reference_characters():
    from megatron_vist2.metrics.cer import CerCounter
    c = CerCounter()
    c.add("kitten", "sitting")         # 3 edits / 7
    c.add("abc", "abc")                # 0 / 3, exact
    s = c.summary()
    assert s["cer"] == pytest.approx(3 / 10) and s["exact_match"] == 0.5 and s["chunks"] == 2
    assert s["char_accuracy"] == pytest.approx(0.7)


def _constructed_per_target(rows=12, S=40, L=8, seed=0):
    """Per-target losses of two models on the same targets: each target has a difficulty both
    models share (correlated losses), the second model is 0.05 nats worse with its own noise."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random((rows, S)) < 0.8, rng.integers(0, 500, (rows, S)), -1)
    target = np.tile(np.arange(S), (rows, 1))
    first = (target % L == 0) & (target > 0)
    hard = rng.gamma(2.0, 1.5, (rows, S)) + rng.normal(0, 0.5, (rows, 1))    # per target and per row
    a = hard + rng.normal(0, 0.2, (rows, S))
    b = hard + 0.05 + rng.normal(0, 0.2, (rows, S))
    common = {"label": label, "target": target, "first": first}
    return {"text": {**common, "loss": a}, "window": {**common, "loss": b}}, L


def test_paired_standard_error_equals_brute_force():
    """The gap window - text and its paired SE sd(d)/sqrt(n) on targets with history, against a
    loop over the constructed targets (statistics.stdev), and the row-clustered SE against the
    sandwich formula over rows written out; the unpaired SE is several times larger here."""
    import statistics
    from megatron_vist2.metrics.paired import categories, difference, difference_sums
    pt, L = _constructed_per_target()
    w, t = pt["window"], pt["text"]
    sel = categories(w, L, bins=5)
    stats = difference_sums(w["loss"], t["loss"], sel)
    names = list(sel)
    for key, keep in (("overall", lambda tg, f: True), ("within_chunk", lambda tg, f: not f),
                      ("chunk_first", lambda tg, f: f), ("within_2", lambda tg, f: not f and tg // L == 2)):
        d, per_row = [], []
        for r in range(w["label"].shape[0]):
            row = [w["loss"][r, k] - t["loss"][r, k] for k in range(w["label"].shape[1])
                   if w["label"][r, k] >= 0 and w["target"][r, k] // L >= 1 and keep(w["target"][r, k], w["first"][r, k])]
            d += row
            if row:
                per_row.append((sum(row), len(row)))
        got = difference(stats[names.index(key)])
        n, mean = len(d), statistics.fmean(d)
        assert got["targets"] == n and got["gap"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert got["gap_se"] == pytest.approx(statistics.stdev(d) / math.sqrt(n), rel=1e-9)
        R = len(per_row)
        clustered = math.sqrt(R / (R - 1) * sum((D - mean * k) ** 2 for D, k in per_row)) / n
        assert got["gap_se_rows"] == pytest.approx(clustered, rel=1e-9)
        # chunk 0 (no history) is left out
        assert n == sum(1 for r in range(12) for k in range(40)
                        if w["label"][r, k] >= 0 and k >= L and keep(k, w["first"][r, k]))
    overall = difference(stats[names.index("overall")])
    a = [w["loss"][r, k] for r in range(12) for k in range(40) if sel["overall"][r, k]]
    b = [t["loss"][r, k] for r in range(12) for k in range(40) if sel["overall"][r, k]]
    unpaired = math.sqrt(statistics.pvariance(a) / len(a) + statistics.pvariance(b) / len(b))
    assert unpaired > 5 * overall["gap_se"], (unpaired, overall)     # measured 0.188 vs 0.016
    # additive over data-parallel ranks (disjoint rows)
    halves = [difference_sums(w["loss"][s], t["loss"][s], {k: v[s] for k, v in sel.items()})
              for s in (slice(0, 5), slice(5, 12))]
    np.testing.assert_allclose(halves[0] + halves[1], stats, rtol=1e-12)


def test_gap_measurable_only_at_two_standard_errors():
    from megatron_vist2.metrics.paired import STATS, controls_difference as difference
    d = np.array([0.1, 0.3, -0.2, 0.5, 0.2])         # one row: no row-clustered SE
    stats = dict(zip(STATS, [5, d.sum(), (d * d).sum(), 1, d.sum() ** 2, d.sum() * 5, 25]))
    g = difference(np.array([stats[k] for k in STATS]))
    se = d.std(ddof=1) / math.sqrt(5)                  # 0.116: a gap of 0.18 is 1.6 SE
    assert g["gap_se"] == pytest.approx(se) and g["gap_se_rows"] is None
    assert not g["measurable"] and "under two standard errors" in g["reason"]
    d2 = d + 0.1
    g2 = difference(np.array([5, d2.sum(), (d2 * d2).sum(), 1, 0, 0, 0]))
    assert g2["measurable"] and g2["gap"] >= 2 * g2["gap_se"]
    assert not difference(np.array([1, 0.3, 0.09, 1, 0, 0, 0]))["measurable"]    # one target


def test_retention_and_its_standard_error_against_the_delta_method():
    """R = mean(w - m) / mean(w - t) on the targets with history, and its paired SE against the
    delta method written with numpy's covariance: var(R) = (var(a) + R^2 var(b) - 2 R cov(a, b))
    / (n mean(b)^2), a = w - m, b = w - t."""
    from megatron_vist2.metrics.paired import categories, retention
    pt, L = _constructed_per_target()
    rng = np.random.default_rng(1)
    w, t = pt["window"]["loss"], pt["text"]["loss"] - 0.4          # history worth 0.45 nats
    m = w - 0.3 * (w - t) + rng.normal(0, 0.1, w.shape)            # keeps about 30 % of it
    per_target = {role: {**pt["window"], "loss": x} for role, x in (("model", m), ("text", t), ("window", w))}
    r = retention(per_target, L, bins=5)
    sel = categories(pt["window"], L, 5)["overall"]
    a, b = (w - m)[sel], (w - t)[sel]
    R = a.mean() / b.mean()
    cov = np.cov(a, b)                                             # ddof 1
    se = math.sqrt((cov[0, 0] + R * R * cov[1, 1] - 2 * R * cov[0, 1]) / len(a)) / b.mean()
    assert r["overall"] == pytest.approx(R, rel=1e-12) and 0.25 < R < 0.35
    assert r["se"]["overall"]["paired"] == pytest.approx(se, rel=1e-9)
    assert r["controls_gap"]["overall"]["measurable"] and "measurable" not in r["model_gap"]["overall"]


def test_recorder_keys_targets_by_text_position(tiny_data, dist_env):
    """The recorder puts every target where its row's text position says, in VIST2 rows and in
    the controls' rows alike: the label kept at slot k is the row's k-th text token (read off the
    text control's row, which holds the text alone), and the chunk-first flags agree."""
    from dataclasses import replace
    from megatron_vist2.data.dataset import PackedVist2Dataset, collate
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.metrics.paired import TargetRecorder, check_same_targets
    from megatron_vist2.models.attention import TEXT
    cfg, tok, _, _ = tiny_model(tiny_data)
    got = {}
    for context in ("vist2", "text", "window"):
        c = replace(cfg, model=replace(cfg.model, context=context))
        ds = PackedVist2Dataset(open_indexed(tiny_data.valid, tok), tok, c, seed=7)
        batch = collate([ds[i] for i in range(3)])
        rec = TargetRecorder(1, 3, cfg.data.seq_length, "cpu")
        rec(batch.labels.double() + 0.5, batch)       # a "loss" that names its target
        got[context] = rec.arrays()
        if context == "text":
            text_rows = [batch.tokens[r][batch.layout.kind[r] == TEXT].numpy() for r in range(3)]
    check_same_targets(got)
    for r in range(3):
        label = got["vist2"]["label"][r]
        has = np.nonzero(label >= 0)[0]
        assert len(has) > 100
        np.testing.assert_array_equal(label[has], text_rows[r][has])
        np.testing.assert_array_equal(got["vist2"]["loss"][r][has], label[has] + 0.5)
    assert all(np.array_equal(got["vist2"]["first"], got[c]["first"]) for c in ("text", "window"))
    got["window"]["label"][0, 5] += 1
    with pytest.raises(Exception, match="scored on other targets"):
        check_same_targets(got)


def test_retrieval_by_depth_side_by_side(tiny_data):
    """Pass-key prompts put the key sentence exactly ``depth`` tokens before the question, and
    every model gets the same prompts: a reader that sees the whole prompt finds the key at every
    depth, one that sees only the last 96 tokens only where the key sentence (42 tokens) lies inside;
    side_by_side puts the two next to each other, cell by cell."""
    import re
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.evaluation.retrieval import NEEDLE, QUESTION, build_trials, retrieval, side_by_side
    tok = load_tokenizer(tiny_data.tokenizer)
    indexed = open_indexed(tiny_data.valid, tok)
    question = tok.encode(QUESTION)
    seen = []

    class Reader:
        def __init__(self, visible):
            self.visible = visible

        def generate(self, prompts, params):
            seen.append(list(prompts[0]))
            found = re.search(r"pass key is (\d{5})", tok.decode(prompts[0][-self.visible:]))
            return [tok.encode(" " + found.group(1)) if found else [0] * params.max_new_tokens]

    for prompt, key in build_trials(tok, np.arange(1000) % 400 + 20, 192, 100, 3, seed=5):
        needle = tok.encode(NEEDLE.format(key=tok.decode(key).strip()))
        end = len(prompt) - 100 - len(question)
        assert len(prompt) == 192 and prompt[end - len(needle):end] == needle
    results = {name: retrieval(lambda n, v=visible: Reader(v), tok, indexed, [192], [8, 120], 3, seed=5)
               for name, visible in (("model", 10 ** 6), ("window", 96))}
    assert seen[:6] == seen[6:]                                       # the same prompts for both
    both = side_by_side(results)
    assert [(c["depth"], c["by_model"]) for c in both["cells"]] == [
        (8, {"model": 1.0, "window": 1.0}), (120, {"model": 1.0, "window": 0.0})]
    assert both["accuracy"] == 1.0 and both["by_model"] == {"model": 1.0, "window": 0.5}


# A hand-built backbone for which history matters: "predict a token this document has used".
# Documents draw i.i.d. from their own SET of the POOL tokens, so a model that sees the earlier
# chunks' text knows the set, and one that sees only its chunk does not. Token POOL[j] is embedded
# as basis vector j plus a constant dimension. Layer 0's attention averages the embeddings of
# every visible text token: one constant query/key direction on RoPE's slowest pair, sharpened by
# the QK-norm gains, so a zero key (a zero visual token) scores 0 against ~23 and takes ~1e-10 of
# the weight. It writes that average to hidden dims READ + j, which only the output head reads
# (the token's own embedding does not reach the logits): the logit of POOL[j] is proportional to
# its share of the visible text. Every other layer and every MLP adds nothing.
POOL = list(range(100, 148))            # 48 token ids
SET, DOCS, READ = 12, 8, 64


def history_backbone(cfg):
    """-> transformers' Qwen3ForCausalLM with the weights above (config from our converter)."""
    from transformers import Qwen3ForCausalLM
    from megatron_vist2.convert.qwen3 import hf_config
    hf = Qwen3ForCausalLM(hf_config(cfg))
    llm = cfg.model.llm
    D, hd, H, G = llm.hidden_size, llm.head_dim, llm.num_heads, llm.num_kv_heads
    const, slow = D - 1, hd // 2 - 1             # the constant embedding dim; RoPE's slowest pair
    assert len(POOL) <= G * hd and READ + len(POOL) <= const
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        emb, head = hf.model.embed_tokens.weight, hf.lm_head.weight
        head[:, const] = -2.0                     # tokens outside the pool: far below it
        for j, tok in enumerate(POOL):
            emb[tok, j], emb[tok, const] = 1.0, 4.0
            head[tok, READ + j], head[tok, const] = 6.0, 0.0
        for i, layer in enumerate(hf.model.layers):
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.fill_(1.0)
            if i:
                continue
            att = layer.self_attn
            for h in range(H):
                att.q_proj.weight[h * hd + slow, const] = 1.0
            for g in range(G):
                att.k_proj.weight[g * hd + slow, const] = 1.0
                att.v_proj.weight[g * hd:(g + 1) * hd, g * hd:(g + 1) * hd] = torch.eye(hd)
            for j in range(len(POOL)):            # value dim j, in kv group j // hd, read by its first q head
                g, r = divmod(j, hd)
                att.o_proj.weight[READ + j, (g * H // G) * hd + r] = 1.0
            att.q_norm.weight.fill_(2.0)
            att.k_norm.weight.fill_(2.0)
        hf.model.norm.weight.fill_(1.0)
    return hf


@pytest.fixture(scope="module")
def history_data(tiny_data, tmp_path_factory):
    """Held-out documents of 7 chunks (one row each), each drawing from its own SET of POOL."""
    from megatron_vist2.data.indexed import write_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_data.tokenizer)
    rng = np.random.default_rng(0)
    docs = [(f"doc{d}", rng.choice(rng.choice(POOL, SET, replace=False), 7 * 32).tolist(), None)
            for d in range(DOCS)]
    prefix = str(tmp_path_factory.mktemp("history") / "valid")
    write_indexed(prefix, docs, tok)
    return prefix


@pytest.fixture(scope="module")
def models(tiny_data, dist_env, tmp_path_factory):
    """Consolidated checkpoints on the same LLM weights (history_backbone): the VIST2 model with
    its aligner output zeroed (W = 0, b = 0: every visual token is 0), the text control, the
    window control."""
    from dataclasses import replace
    from megatron_vist2.convert.qwen3 import import_backbone
    from megatron_vist2.models.vist2 import Vist2Model
    root = tmp_path_factory.mktemp("eval_models")
    cfg, tok, _, vist2 = tiny_model(tiny_data, "model.llm.tie_embeddings=false")
    assert cfg.model.chunk.text_tokens == 32
    history_backbone(cfg).save_pretrained(str(root / "hf"))
    got = vist2.load_state_dict(import_backbone(str(root / "hf"), cfg), strict=False)
    assert not got.unexpected_keys
    with torch.no_grad():
        for p in vist2.front.aligner.parameters():
            p.zero_()
    state = vist2.state_dict()
    out = {"zeroed": write_checkpoint(root / "zeroed", cfg, tok, vist2).parent}
    for context in ("text", "window"):
        c = replace(cfg, model=replace(cfg.model, context=context))
        control = Vist2Model(c)
        missing = control.load_state_dict({k: v for k, v in state.items() if k in control.state_dict()}, strict=False)
        assert not missing.missing_keys
        out[context] = write_checkpoint(root / context, c, tok, control).parent
    return out


def evaluate(valid, model, text, window):
    from megatron_vist2.evaluation.runner import Options, run
    return run(Options(checkpoint=str(model), text=str(text), window=str(window), batches=1, micro_batch=DOCS,
                       ocr_chunks=0, long_docs=0, valid_prefix=valid))


@pytest.mark.slow                      # three checkpoints through the whole evaluation
def test_text_control_as_the_model_gives_retention_one(history_data, models):
    r = evaluate(history_data, models["text"], models["text"], models["window"])
    h = r["heldout"]
    assert h["model"]["loss"] == h["text"]["loss"]
    assert h["window"]["within_chunk"]["loss"] - h["text"]["within_chunk"]["loss"] > 0.3    # history matters
    assert r["retention"]["overall"] == pytest.approx(1.0, abs=1e-9)
    assert all(row["within"] == pytest.approx(1.0, abs=1e-9) for row in r["retention"]["by_chunk"]
               if row["within"] is not None)


@pytest.mark.slow
def test_zeroed_aligner_keeps_no_history(history_data, models):
    """Zero visual tokens carry nothing: within a chunk the model sees only the chunk's own text
    (plus zero keys and values that take ~1e-10 of the attention), so on within-chunk targets it
    scores like the window control, R ~ 0 (measured 5.4e-9 on the targets with history), while
    history is worth 5.1 +- 0.19 nats there to the text control.
    Its chunk-first targets see nothing at all: uniform over the vocabulary."""
    r = evaluate(history_data, models["zeroed"], models["text"], models["window"])
    h = r["heldout"]
    assert h["model"]["targets"] == h["window"]["targets"] - h["window"]["chunk_first"]["targets"] \
        + h["model"]["chunk_first"]["targets"]
    gap = h["window"]["within_chunk"]["loss"] - h["text"]["within_chunk"]["loss"]
    assert gap > 1.0 and r["retention"]["controls_gap"]["within_chunk"]["measurable"], h     # measured 4.37 on all
    assert abs(r["retention"]["within_chunk"]) < 1e-4, r["retention"]               # measured 5.4e-9
    # every chunk's first token is predicted from a zero hidden state (the last visual token):
    # logits 0, uniform over the (padded) vocabulary of 512
    assert h["model"]["chunk_first"]["loss"] == pytest.approx(math.log(512), rel=1e-5)


def test_target_tags_split_the_training_loss_by_chunk(tiny_data, dist_env):
    """The per-target statistics add up to the training loss's sum and target count, and the
    chunk-first targets are one per chunk > 0 of each segment (counted from the segments)."""
    from megatron_vist2.data.dataset import collate
    from megatron_vist2.metrics.targets import chunk_bins, summarize, target_loss_fn
    from megatron_vist2.metrics.loss import token_losses
    cfg, tok, ds, model = tiny_model(tiny_data)
    rows = [ds[i] for i in range(4)]
    batch = collate(rows)
    L = cfg.model.chunk.text_tokens
    with torch.no_grad():
        logits = model(batch)
    total, count = token_losses(logits, batch)
    bins = chunk_bins(cfg)
    _, stats = target_loss_fn(bins, L)(logits, batch)
    s = summarize(stats, bins)
    assert s["loss"] == pytest.approx(float(total / count), rel=1e-6) and s["targets"] == int(count)
    logp = torch.log_softmax(logits.float(), -1)                        # [seq, batch, vocab]
    nll = -logp.gather(-1, batch.labels.t()[..., None])[..., 0][batch.loss_mask.t() > 0]
    assert s["loss_variance"] == pytest.approx(float(nll.var(unbiased=False)), rel=1e-5)
    segments = [seg for i in range(4) for seg in ds.rows[ds.row_index(i)]]
    want_first = sum(seg.num_chunks(L) - 1 for seg in segments)       # no read-back chunks
    assert s["chunk_first"]["targets"] == want_first
    by_chunk = [sum(1 for seg in segments if seg.num_chunks(L) > c) for c in range(1, bins)]
    assert [r["targets_first"] for r in s["by_chunk"][1:]] == by_chunk


@pytest.mark.slow                      # a 2-step training run in this process
def test_during_training_metrics(tiny_data, dist_env, tmp_path):
    """The cheap subset at a training evaluation: the read-back CER logged equals ocr_readback
    run on the saved final weights (a plain model, not the training engine) over the same
    chunks, and the held-out loss lies between its chunk-first and within-chunk parts."""
    import json
    from megatron_vist2.checkpoint.reshard import load_weights
    from megatron_vist2.checkpoint.sources import open_checkpoint
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.renderer import Renderer
    from megatron_vist2.metrics.readback import held_out_chunks, ocr_readback
    from megatron_vist2.train import main
    from tests.conftest import tiny_overrides
    run = tmp_path / "run"
    main(["--preset", "tiny-cpu", *tiny_overrides(tiny_data, "train.steps=2", "train.eval_interval=2",
                                                  "train.eval_batches=1", "train.ocr_cer_chunks=3",
                                                  "model.init_std=0.1", f"logging.dir={run}",
                                                  f"checkpoint.save_dir={run}/ckpt")])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in logged if r["step"] == 2 and "eval/ocr_cer" in r][-1]
    cfg, tok, _, model = tiny_model(tiny_data, "model.init_std=0.1")
    load_weights(model, open_checkpoint(str(run / "ckpt")), 1, 0, log=lambda *_: None)
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    chunks = held_out_chunks(open_indexed(tiny_data.valid, tok), L, 3)
    want = ocr_readback(model.eval(), chunks, Renderer.from_model_config(cfg.model), tok, L, m)
    assert ev["eval/ocr_cer"] == pytest.approx(want["cer"], abs=1e-12)
    parts = sorted((ev["eval/loss_chunk_first"], ev["eval/loss_within_chunk"]))
    assert parts[0] <= ev["eval/loss"] <= parts[1]
