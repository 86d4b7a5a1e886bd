"""The controls (model.context text / window, docs/spec.md "Controls"): the same rows and
targets as the VIST2 model; the text control is a plain causal Qwen3 over each segment
(transformers' Qwen3ForCausalLM on the same weights); the window control is each chunk run alone."""
import numpy as np
import pytest
import torch
from transformers import Qwen3ForCausalLM

from megatron_vist2.config import ConfigError, load_config, validate
from megatron_vist2.convert.qwen3 import export_backbone
from megatron_vist2.data.dataset import collate
from megatron_vist2.data.packing import Segment
from megatron_vist2.models import TEXT, VISUAL

from ..conftest import tiny_model, tiny_overrides
from ..inference_helpers import causal_text_batch


def segments(L):
    """Doc 0: 4 chunks, the last one short; doc 1: 2 chunks; doc 2: one short chunk."""
    return [Segment(0, 100, 3 * L + 5, (False,) * 4), Segment(1, 0, 2 * L, (False, False)),
            Segment(2, 7, 9, (False,))]


def targets(row, doc_tokens):
    """{(segment slot, offset in its text): (label, weight, chunk-first)} of a row's labels."""
    out = {}
    for p in np.nonzero(row["target"] >= 0)[0]:
        key = (int(row["doc"][p]), int(row["target"][p]))
        assert key not in out
        out[key] = (int(row["labels"][p]), float(row["loss_mask"][p]), bool(row["first_target"][p]))
    return out


@pytest.mark.parametrize("order", ["blocked", "interleaved"])
def test_controls_have_the_models_text_and_targets(dist_env, tiny_data, order):
    cfg, tok, ds, _ = tiny_model(tiny_data, "data.seq_length=320")
    L, segs = cfg.model.chunk.text_tokens, segments(cfg.model.chunk.text_tokens)
    docs = [ds.indexed.tokens(s.doc_index, s.start, s.length) for s in segs]
    rows = {}
    for ctx in ("vist2", "text", "window"):
        ds.context = ctx
        rows[ctx] = ds.build_row(segs, order)
    ours = targets(rows["vist2"], docs)
    # the reference: every token of a segment but its first is a target, read off the document
    expected = {(slot, t): (int(d[t]), 1.0, t % L == 0) for slot, d in enumerate(docs)
                for t in range(1, len(d))}
    assert ours == expected
    for ctx in ("text", "window"):
        row = rows[ctx]
        assert targets(row, docs) == expected
        assert (row["kind"] != VISUAL).all() and row["images"].shape[0] == 0
        assert np.array_equal(row["tokens"][row["kind"] == TEXT], np.concatenate(docs))
        text = row["kind"] == TEXT
        offset = np.concatenate([np.arange(len(d)) for d in docs])
        want = offset if ctx == "text" else offset % L
        assert np.array_equal(row["position"][text], want)
        # the chunk-first target sits on the previous chunk's last text token
        first = np.nonzero(row["first_target"])[0]
        assert len(first) == 3 + 1 and all(row["kind"][p] == TEXT and
                                           row["position"][p] % L == L - 1 for p in first)
    ds.context = "vist2"


def model_of(tiny_data, context, *extra):
    return tiny_model(tiny_data, "model.init_std=0.1", "data.seq_length=320",
                      f"model.context={context}", *extra)


def test_text_control_equals_transformers_qwen3_per_segment(dist_env, tiny_data, tmp_path):
    cfg, tok, ds, model = model_of(tiny_data, "text")
    assert model.front.vision is None and model.front.aligner is None
    state = {n: p.detach() for n, p in model.named_parameters()}
    hf = Qwen3ForCausalLM.from_pretrained(str(export_backbone(state.__getitem__, cfg, str(tmp_path / "hf"))),
                                          local_files_only=True).eval()
    segs = segments(cfg.model.chunk.text_tokens)
    batch = collate([ds.build_row(segs)])
    V = cfg.model.llm.vocab_size
    with torch.no_grad():
        ours = model(batch)[:, 0, :V]
        for slot, s in enumerate(segs):
            ids = ds.indexed.tokens(s.doc_index, s.start, s.length)
            theirs = hf(torch.tensor([ids.tolist()])).logits[0]
            where = ((batch.layout.doc == slot) & (batch.layout.kind == TEXT))[0]
            assert (ours[where] - theirs).abs().max().item() <= 1e-4


def test_window_control_equals_each_chunk_alone(dist_env, tiny_data):
    cfg, tok, ds, model = model_of(tiny_data, "window")
    L, V = cfg.model.chunk.text_tokens, cfg.model.llm.vocab_size
    segs = segments(L)
    batch = collate([ds.build_row(segs)])
    hw = (cfg.model.chunk.image_height, cfg.model.chunk.image_width)
    lay = batch.layout
    with torch.no_grad():
        ours = model(batch)[:, 0, :V]
        for slot, s in enumerate(segs):
            ids = ds.indexed.tokens(s.doc_index, s.start, s.length).tolist()
            for c in range(s.num_chunks(L)):
                alone = model(causal_text_batch(ids[c * L:(c + 1) * L], hw))[:, 0, :V]
                where = ((lay.doc == slot) & (lay.chunk == c) & (lay.kind == TEXT))[0]
                assert (ours[where] - alone).abs().max().item() <= 1e-5
    # positive control: the text control's chunk 1 differs (it sees chunk 0)
    text_model = model_of(tiny_data, "text")[3]
    text_model.load_state_dict(model.state_dict())
    ds.context = "text"
    tbatch = collate([ds.build_row(segs)])
    ds.context = "window"
    with torch.no_grad():
        theirs = text_model(tbatch)[:, 0, :V]
    where = ((lay.doc == 0) & (lay.chunk == 1) & (lay.kind == TEXT))[0]
    assert (ours[where] - theirs[where]).abs().max().item() > 1e-3


@pytest.mark.parametrize("bad,match", [
    ("model.context=uncompressed", "model.context must be 'vist2', 'text' or 'window'"),
    ("data.readback_fraction=0.5", "data.readback_fraction / data.readback_schedule"),
    ("data.readback_schedule=[[0, 1.0], [10, 0.0]]", "data.readback_schedule"),
    ("train.ocr_probe_batches=1", "train.ocr_probe_batches"),
    ("train.freeze=[front.vision]", "has no front.vision"),
])
def test_bad_context_settings_are_refused(tiny_data, bad, match):
    extra = [] if bad.startswith("model.context") else ["model.context=window"]
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace(".", r"\.")):
        validate(load_config("tiny-cpu", tiny_overrides(tiny_data, *extra, bad)))
    if extra:   # the same setting is fine for the model
        validate(load_config("tiny-cpu", tiny_overrides(tiny_data, bad)))


@pytest.mark.parametrize("context", ["text", "window"])
def test_engine_runs_the_controls_as_trained(dist_env, tiny_data, context):
    """The engine in the control's own mode gives the teacher-forced forward's logits on the
    control's row, prompts ending mid-chunk and on a chunk boundary; the window cache holds one
    chunk; compressing is refused."""
    from megatron_vist2.inference import InferenceError, Vist2Engine
    from ..inference_helpers import engine_logits, streams, teacher_forced
    cfg, tok, ds, model = model_of(tiny_data, context, "data.seq_length=160")   # (the streams fit a row)
    L = cfg.model.chunk.text_tokens
    data = streams(ds, [2 * L + 5, L + 4], seed=1)       # decoding crosses chunk boundaries
    engine = Vist2Engine(model, tok, cfg, max_context=3 * L, batch_size=2)
    assert engine.mode == {"text": "full", "window": "window"}[context]
    got = engine_logits(engine, data, [L + 3, L], L)
    for b, s in enumerate(data):
        ref = teacher_forced(model, ds, s, context)
        assert set(got[b]) == set(range(1, len(s)))
        assert max((got[b][i] - ref[i]).abs().max().item() for i in got[b]) <= 1e-4
    if context == "window":
        assert engine.cache.text_slots == L and engine.cache.visual_slots == 0
    with pytest.raises(InferenceError, match=f"model.context '{context}' model has no vision encoder"):
        Vist2Engine(model, tok, cfg, compress=True)


@pytest.mark.parametrize("context", ["text", "window"])
def test_attended_pairs_of_the_controls_equal_their_mask(dist_env, tiny_data, context):
    """The FLOPs count (MFU) of a control's row: the pairs its mask allows, padding queries aside."""
    from megatron_vist2.models import dense_mask
    from megatron_vist2.cost.flops import attended_pairs
    cfg, tok, ds, _ = tiny_model(tiny_data, "data.seq_length=320")
    ds.context = context
    batch = collate([ds.build_row(segments(cfg.model.chunk.text_tokens))])
    ds.context = "vist2"
    allowed = dense_mask(batch.layout, context)[0, 0] & (batch.layout.doc[0] >= 0)[:, None]
    assert attended_pairs(batch.layout, context) == int(allowed.sum())


def test_control_parameter_counts(dist_env, tiny_data):
    """No vision encoder or aligner: the built model's counts equal the formula's, LLM unchanged."""
    from megatron_vist2.config import analytic_parameter_counts
    cfg, _, _, model = model_of(tiny_data, "window")
    vcfg, _, _, vist2 = model_of(tiny_data, "vist2")
    counts = model.parameter_counts()
    assert counts == analytic_parameter_counts(cfg) and counts["vision"] == counts["aligner"] == 0
    assert counts["llm"] == vist2.parameter_counts()["llm"] == analytic_parameter_counts(vcfg)["llm"]


def test_text_control_checkpoint_exports_as_qwen3(dist_env, tiny_data, tmp_path, capsys):
    """tools/convert_checkpoint.py on a text-control checkpoint writes a Qwen3ForCausalLM whose
    logits equal the control's forward on a segment."""
    from tests.bad_input.conftest import write_checkpoint
    from tests.bad_input.harness import invoke
    cfg, tok, ds, model = model_of(tiny_data, "text")
    write_checkpoint(tmp_path / "ckpt", cfg, tok, model)
    assert invoke("tools/convert_checkpoint.py", ["--checkpoint", str(tmp_path / "ckpt"),
                                                  "--out", str(tmp_path / "hf")]) == 0
    assert "the export is the whole model" in capsys.readouterr().out
    hf = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    seg = segments(cfg.model.chunk.text_tokens)[0]
    ids = ds.indexed.tokens(seg.doc_index, seg.start, seg.length)
    batch = collate([ds.build_row([seg])])
    where = (batch.layout.kind == TEXT)[0]
    with torch.no_grad():
        ours = model(batch)[:, 0, :cfg.model.llm.vocab_size][where]
        theirs = hf(torch.tensor([ids.tolist()])).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4
