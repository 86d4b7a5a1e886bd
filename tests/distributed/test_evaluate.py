"""tools/evaluate.py in the launcher's layout (one job of the 4-rank pool: TP 2 x PP 2) and on a
checkpoint saved in the TP2/PP2/ZeRO-3 layout gives the single-process numbers of the same
weights (1e-5): held-out loss, chunk-first and within-chunk losses, loss by chunk index, and
against the two controls the paired gaps and their standard errors; and with TP2 alone (two
data-parallel ranks), the engine's measures (OCR read-back, retrieval of the model and of both
controls, loss beyond the training length) and the paired statistics summed over the ranks."""
import json

import pytest

from tests.bad_input.conftest import write_checkpoint
from tests.conftest import tiny_model
from tests.distributed import pool

pytestmark = pytest.mark.slow              # multi-rank jobs, launches or training runs (the slow tier: tests/conftest.py)


@pytest.fixture(scope="module")
def checkpoint(tiny_data, dist_env, tmp_path_factory):
    cfg, tok, _, model = tiny_model(tiny_data, "model.init_std=0.1")
    return write_checkpoint(tmp_path_factory.mktemp("eval_ckpt") / "ckpt", cfg, tok, model).parent


@pytest.fixture(scope="module")
def controls(tiny_data, dist_env, tmp_path_factory):
    """The checkpoint's weights (without the vision front) as the text and the window control."""
    from dataclasses import replace
    from megatron_vist2.models.vist2 import Vist2Model
    cfg, tok, _, model = tiny_model(tiny_data, "model.init_std=0.1")
    root, state, out = tmp_path_factory.mktemp("eval_controls"), model.state_dict(), {}
    for context in ("text", "window"):
        c = replace(cfg, model=replace(cfg.model, context=context))
        control = Vist2Model(c)
        control.load_state_dict({k: v for k, v in state.items() if k in control.state_dict()})
        out[context] = str(write_checkpoint(root / context, c, tok, control).parent)
    return out


@pytest.fixture(scope="module")
def launched(checkpoint, controls, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_4ranks")
    proc = pool.run(4, "script", ["tests/distributed/eval_worker.py", str(checkpoint), str(out), tiny_data.valid,
                                  controls["text"], controls["window"]], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "results.json").read_text()), out


def heldout_numbers(results):
    m = results["heldout"]["model"]
    return [m["loss"], m["chunk_first"]["loss"], m["within_chunk"]["loss"]] + \
        [r["loss_within"] for r in m["by_chunk"] if r["loss_within"] is not None]


def test_tp2_pp2_evaluation_equals_one_process(launched, checkpoint, controls, tiny_data):
    from megatron_vist2.evaluation.runner import Options, run
    single = run(Options(checkpoint=str(checkpoint), batches=2, micro_batch=4, ocr_chunks=0, long_docs=0,
                         valid_prefix=tiny_data.valid, **controls))
    want = heldout_numbers(single)
    results, out = launched
    for name in ("consolidated", "tp2pp2z3"):
        got = heldout_numbers(results[name])
        assert got == pytest.approx(want, abs=1e-5), name
        assert results[name]["heldout"]["model"]["targets"] == single["heldout"]["model"]["targets"]
    # the paired statistics (kept per target on the last stage, shared with every stage)
    assert numbers(results["consolidated"]["retention"]) == pytest.approx(numbers(single["retention"]), abs=1e-5)
    assert single["retention"]["controls_gap"]["overall"]["targets"] > 1000
    # the saved checkpoint is in the layout asked for, read back by the same evaluation
    layout = json.loads((out / "tp2pp2z3" / "step_0000002" / "complete.json").read_text())["layout"]
    assert (layout["tensor_parallel"], layout["pipeline_parallel"], layout["zero_stage"]) == (2, 2, 3)


def test_tp2_engine_measures_equal_one_process(launched, controls, tiny_data):
    """OCR read-back (the read text and its CER), retrieval and the long-document loss through the
    engine on TP ranks equal one process on the same weights."""
    from megatron_vist2.evaluation.runner import Options, run
    from tests.distributed.eval_worker import ENGINE
    results, out = launched
    single = run(Options(checkpoint=str(out / "tp2pp2z3"), **ENGINE, valid_prefix=tiny_data.valid, **controls))
    got = results["tp2_engine"]
    assert got["layout"]["tp"] == 2 and got["layout"]["pp"] == 1
    ocr, want = got["ocr_readback"], single["ocr_readback"]
    assert ocr["chunks"] == want["chunks"] == ENGINE["ocr_chunks"]
    assert ocr["examples"] == want["examples"] and ocr["cer"] == pytest.approx(want["cer"], abs=1e-12)
    assert ocr["blind"]["cer"] == pytest.approx(want["blind"]["cer"], abs=1e-12)
    assert got["retrieval"] == single["retrieval"]
    assert set(got["retrieval"]["by_model"]) == {"model", "text", "window"}
    # the paired statistics of two data-parallel ranks' rows equal one process over all of them
    both = run(Options(checkpoint=str(out / "tp2pp2z3"), batches=1, micro_batch=8, ocr_chunks=0, long_docs=0,
                       valid_prefix=tiny_data.valid, **controls))
    assert numbers(got["retention"]) == pytest.approx(numbers(both["retention"]), abs=1e-5)
    long_got, long_want = got["beyond_training_length"], single["beyond_training_length"]
    assert long_want, "no long document was scored"
    assert long_got["documents"] == long_want["documents"] == 1 and long_got["loss_beyond_training_length"]
    assert numbers(long_got) == pytest.approx(numbers(long_want), rel=1e-4)


def numbers(tree):
    """Every number in a nested result, in key order."""
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in numbers(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []
