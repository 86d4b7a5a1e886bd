"""Bad input to tools/evaluate.py: controls trained with another tokenizer, chunking or data, a
checkpoint whose model.context this version does not know, a control passed in the wrong role,
retrieval depths beyond the context, an empty evaluation set, a held-out set with no target
beyond chunk 0 (no history: R would be noise), more rows asked for than the held-out set holds
before its rows repeat, an existing output directory.
Refused with the flag/field named, no checkpoint touched, no output written."""
import pytest

from tests.bad_input.conftest import copy_ckpt, edit_manifest, edit_saved_config
from tests.bad_input.harness import Case, check

STEP = "step_0000002"


def control(context, **edits):
    """A copy of the test checkpoint posing as a ``context`` control, with ``edits`` to its
    records: tokenizer (manifest sha256), text_tokens (chunking), train_prefix (data)."""
    def setup(ctx):
        d = copy_ckpt(ctx, context) / STEP

        def edit(cfg):
            cfg["model"]["context"] = context
            if "text_tokens" in edits:
                cfg["model"]["chunk"]["text_tokens"] = edits["text_tokens"]
            if "train_prefix" in edits:
                cfg["data"]["train_prefix"] = edits["train_prefix"]
        edit_saved_config(d, edit)
        if "tokenizer" in edits:
            edit_manifest(d, tokenizer_sha256=edits["tokenizer"])
    return setup


def empty_valid(ctx):
    from megatron_vist2.data.indexed import write_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    write_indexed(str(ctx.tmp / "empty"), [], load_tokenizer(ctx.data.tokenizer))


def held_out(name, docs, length):
    """A held-out set of ``docs`` documents of ``length`` tokens each."""
    def setup(ctx):
        import numpy as np
        from megatron_vist2.data.indexed import write_indexed
        from megatron_vist2.data.tokenizer import load_tokenizer
        rng = np.random.default_rng(0)
        write_indexed(str(ctx.tmp / name), [(f"d{i}", rng.integers(10, 500, length).tolist(), None)
                                            for i in range(docs)], load_tokenizer(ctx.data.tokenizer))
    return setup


def both(*setups):
    return lambda ctx: [s(ctx) for s in setups]


def evaluate(*args):
    return lambda c: ["--checkpoint", str(c.ckpt), "--out", str(c.tmp / "eval"), "--ocr-chunks", "0",
                      "--long-docs", "0", *[a.format(tmp=c.tmp, data=c.data) for a in args]]


CASES = [
    Case("eval-control-other-tokenizer", "tools/evaluate.py", evaluate("--text", "{tmp}/text"),
         ["--text", "was not trained like", "tokenizer sha256"], control("text", tokenizer="ab" * 32)),
    Case("eval-control-other-chunking", "tools/evaluate.py", evaluate("--window", "{tmp}/window"),
         ["--window", "model.chunk.text_tokens: --checkpoint 32, --window 16"],
         control("window", text_tokens=16)),
    Case("eval-control-other-data", "tools/evaluate.py", evaluate("--text", "{tmp}/text"),
         ["--text", "data.train_prefix", "/elsewhere/train"], control("text", train_prefix="/elsewhere/train")),
    Case("eval-unknown-context", "tools/evaluate.py", evaluate("--window", "{tmp}/retro"),
         ["--window", "config.yaml", "model.context must be 'vist2', 'text' or 'window', got 'retro'"], control("retro")),
    Case("eval-control-wrong-role", "tools/evaluate.py", evaluate("--window", "{tmp}/text"),
         ["--window", "expected a checkpoint with model.context=window", "model.context=text"], control("text")),
    Case("eval-retrieval-depth-beyond-context", "tools/evaluate.py",
         evaluate("--valid-prefix", "{data.valid}", "--retrieval-contexts", "128", "--retrieval-depths", "8,100"),
         ["retrieval depth 100 does not fit a context of 128 tokens", "--retrieval-contexts"]),
    Case("eval-empty-set", "tools/evaluate.py", evaluate("--valid-prefix", "{tmp}/empty"),
         ["the evaluation set", "empty", "cannot be used"], empty_valid),
    # documents of 20 tokens: one chunk each, so no target has history and R cannot be measured
    # (before: exit 0 and eval.json with R = -201.9)
    Case("eval-no-history", "tools/evaluate.py",
         evaluate("--valid-prefix", "{tmp}/short", "--text", "{tmp}/text", "--window", "{tmp}/window",
                  "--batches", "1", "--micro-batch", "2"),
         ["no held-out target of", "has history", "one chunk", "--valid-prefix"],
         both(held_out("short", 40, 20), control("text"), control("window"))),
    # 10 documents of one row each, 16 rows asked for: rows would repeat (before: not mentioned)
    Case("eval-rows-repeat", "tools/evaluate.py", evaluate("--valid-prefix", "{tmp}/small"),
         ["asks for 16 held-out rows", "holds 8 before its rows repeat", "use --batches 2"],
         held_out("small", 10, 224)),
    Case("eval-out-exists", "tools/evaluate.py", evaluate(),
         ["--out", "already exists"], lambda c: (c.tmp / "eval").mkdir()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_evaluation_input(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.ckpt, ctx.data.root])
