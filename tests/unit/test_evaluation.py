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


def test_retention_ratio_formula():
    from megatron_vist2.metrics.targets import retention_ratio
    assert retention_ratio(2.0, 3.0, 2.0) == 1.0           # as good as the text control
    assert retention_ratio(3.0, 3.0, 2.0) == 0.0           # as good as no history
    assert retention_ratio(2.5, 3.0, 2.0) == 0.5
    assert retention_ratio(2.5, 3.0, 3.0) is None          # the controls do not differ


def test_controls_gap_and_its_standard_error():
    from megatron_vist2.metrics.targets import controls_gap
    window = {"loss": 3.0, "targets": 100, "loss_variance": 4.0}
    text = {"loss": 2.9, "targets": 400, "loss_variance": 1.0}
    g = controls_gap(window, text)
    se = math.sqrt(4.0 / 100 + 1.0 / 400)                     # 0.206: a 0.1-nat gap is noise
    assert g["gap"] == pytest.approx(0.1) and g["gap_se"] == pytest.approx(se) and not g["measurable"]
    assert controls_gap({**window, "loss": 3.5}, text)["measurable"]


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
    scores like the window control, R ~ 0 (measured -1.3e-7), while history is worth 4.4 nats
    to the text control.
    Its chunk-first targets see nothing at all: uniform over the vocabulary."""
    r = evaluate(history_data, models["zeroed"], models["text"], models["window"])
    h = r["heldout"]
    assert h["model"]["targets"] == h["window"]["targets"] - h["window"]["chunk_first"]["targets"] \
        + h["model"]["chunk_first"]["targets"]
    gap = h["window"]["within_chunk"]["loss"] - h["text"]["within_chunk"]["loss"]
    assert gap > 1.0 and r["retention"]["controls_gap"]["within_chunk"]["measurable"], h     # measured 4.37
    assert abs(r["retention"]["within_chunk"]) < 1e-4, r["retention"]               # measured -1.3e-7
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
