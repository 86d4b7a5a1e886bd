"""tools/evaluate.py's command line: every flag out of its range, malformed lists, checkpoints
and held-out data that do not exist, overrides that are not config fields, an output path that
cannot be created. Refused naming the flag before any model is built, nothing written."""
import pytest

from tests.bad_input.harness import Case, check


def evaluate(*args, out="eval"):
    return lambda c: ["--checkpoint", str(c.ckpt), "--out", str(c.tmp / out), "--ocr-chunks", "0",
                      "--long-docs", "0", *[a.format(tmp=c.tmp, data=c.data) for a in args]]


E = "tools/evaluate.py"

CASES = [
    Case("eval-batches-zero", E, evaluate("--batches", "0"), ["--batches must be >= 1, got 0"]),
    Case("eval-micro-batch-zero", E, evaluate("--micro-batch", "0"), ["--micro-batch must be >= 1"]),
    Case("eval-tp-zero", E, evaluate("--tp", "0"), ["--tp must be >= 1"]),
    Case("eval-pp-negative", E, evaluate("--pp", "-2"), ["--pp must be >= 1"]),
    Case("eval-retrieval-trials-zero", E, evaluate("--retrieval-trials", "0"), ["--retrieval-trials must be >= 1"]),
    Case("eval-ocr-chunks-negative", E, evaluate("--ocr-chunks", "-1"), ["--ocr-chunks must be >= 0"]),
    Case("eval-long-docs-negative", E, evaluate("--long-docs", "-3"), ["--long-docs must be >= 0"]),
    Case("eval-long-max-tokens-negative", E, evaluate("--long-max-tokens", "-1"), ["--long-max-tokens must be >= 0"]),
    Case("eval-batches-not-a-number", E, evaluate("--batches", "four"), ["--batches: invalid int value"]),
    Case("eval-contexts-not-integers", E, evaluate("--retrieval-contexts", "512,big", "--retrieval-depths", "8"),
         ["--retrieval-contexts: expected comma-separated integers"]),
    Case("eval-contexts-without-depths", E, evaluate("--retrieval-contexts", "512"),
         ["--retrieval-contexts and --retrieval-depths go together"]),
    Case("eval-depths-without-contexts", E, evaluate("--retrieval-depths", "8"),
         ["--retrieval-contexts and --retrieval-depths go together"]),
    Case("eval-checkpoint-missing", E, lambda c: ["--checkpoint", str(c.tmp / "none"), "--out", str(c.tmp / "e")],
         ["--checkpoint", "none: no such checkpoint directory"]),
    Case("eval-text-control-missing", E, evaluate("--text", "{tmp}/none"), ["--text", "none: no such checkpoint directory"]),
    Case("eval-window-control-missing", E, evaluate("--window", "{tmp}/none"),
         ["--window", "none: no such checkpoint directory"]),
    Case("eval-model-as-text-control", E, lambda c: [*evaluate()(c), "--text", str(c.ckpt)],
         ["--text", "expected a checkpoint with model.context=text, it has model.context=vist2"]),
    Case("eval-valid-prefix-missing", E, evaluate("--valid-prefix", "{tmp}/none"), ["none.bin is missing"]),
    Case("eval-unknown-override", E, evaluate("model.llm.nope=1"), ["unknown config key 'model.llm.nope'"]),
    Case("eval-out-is-a-file", E, evaluate(out="afile"), ["--out", "afile"],
         lambda c: (c.tmp / "afile").write_text("x")),
    Case("eval-out-under-a-file", E, evaluate(out="afile/eval"), ["--out", "afile"],
         lambda c: (c.tmp / "afile").write_text("x")),
    Case("eval-missing-required-out", E, lambda c: ["--checkpoint", str(c.ckpt)],
         ["the following arguments are required: --out"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_evaluate_arguments(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.ckpt, ctx.data.root])
