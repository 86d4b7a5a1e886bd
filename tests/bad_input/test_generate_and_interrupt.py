"""Bad generation flags and prompts (refused before any model is built where the flag alone is
wrong), and the interruption classes that need no training run: a save directory holding only
an unfinished save, a second Ctrl-C."""
import pytest

from tests.bad_input.harness import Case, check


def gen(*args):
    return lambda c: ["--checkpoint", str(c.ckpt), *[a.format(tmp=c.tmp) for a in args]]


def only_partial(ctx):
    (ctx.tmp / "half" / "step_0000004.partial").mkdir(parents=True)


CASES = [
    Case("max-new-tokens-zero", "generate", gen("--prompt", "hi", "--max-new-tokens", "0"),
         ["--max-new-tokens must be >= 1, got 0"]),
    Case("max-new-tokens-negative", "generate", gen("--prompt", "hi", "--max-new-tokens", "-5"),
         ["--max-new-tokens must be >= 1"]),
    Case("max-new-tokens-not-a-number", "generate", gen("--prompt", "hi", "--max-new-tokens", "ten"),
         ["--max-new-tokens: invalid int value"]),
    Case("temperature-negative", "generate", gen("--prompt", "hi", "--temperature", "-0.5"),
         ["--temperature must be a finite number >= 0"]),
    Case("temperature-nan", "generate", gen("--prompt", "hi", "--temperature", "nan"),
         ["--temperature must be a finite number"]),
    Case("top-p-zero", "generate", gen("--prompt", "hi", "--top-p", "0"), ["--top-p must be in (0, 1]"]),
    Case("top-p-above-one", "generate", gen("--prompt", "hi", "--top-p", "1.5"), ["--top-p must be in (0, 1]"]),
    Case("max-context-one", "generate", gen("--prompt", "hi", "--max-context", "1"), ["--max-context must be >= 2"]),
    Case("seed-negative", "generate", gen("--prompt", "hi", "--seed", "-1"), ["--seed must be >= 0"]),
    Case("prompt-empty", "generate", gen("--prompt", "   "), ["the prompt is empty"]),
    Case("prompt-and-file", "generate", gen("--prompt", "a", "--prompt-file", "b"), ["not allowed with argument"]),
    Case("prompt-file-missing", "generate", gen("--prompt-file", "{tmp}/none.txt"),
         ["--prompt-file", "none.txt does not exist"]),
    Case("prompt-file-not-utf8", "generate", gen("--prompt-file", "{tmp}/latin1.txt"),
         ["latin1.txt is not UTF-8 text (byte 4"], lambda c: (c.tmp / "latin1.txt").write_bytes(b"caf \xe9t\xe9")),
    Case("checkpoint-missing", "generate", lambda c: ["--checkpoint", str(c.tmp / "nope"), "--prompt", "hi"],
         ["nope does not exist"]),
    Case("checkpoint-only-unfinished", "generate", lambda c: ["--checkpoint", str(c.tmp / "half"), "--prompt", "hi"],
         ["holds only an unfinished save (step_0000004.partial)"], only_partial),
    Case("tokenizer-flag-other-tokenizer", "generate", gen("--prompt", "hi", "--tokenizer", "{tmp}/t.model"),
         ["is not a sentencepiece model"], lambda c: (c.tmp / "t.model").write_text("x")),
    Case("chat-without-template", "generate", gen("--prompt", "hi", "--chat", "--baseline"),
         ["--chat", "has no chat template"]),
    Case("unknown-override", "generate", gen("--prompt", "hi", "model.llm.nope=1"), ["unknown config key 'model.llm.nope'"]),
    Case("stop-string-empty", "generate", gen("--prompt", "hi", "--stop", ""), ["--stop must not be empty"]),
    Case("max-context-beyond-memory", "generate", gen("--prompt", "hi", "--max-context", "100000000000"),
         ["--max-context 100,000,000,000 needs a KV cache of", "lower --max-context"]),
    Case("prompt-file-is-a-directory", "generate", gen("--prompt-file", "{tmp}"), ["--prompt-file", "is not a file"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_generation_input(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.ckpt, ctx.data.root])


def test_second_ctrl_c_stops_at_once_with_a_message(capsys):
    """The first SIGINT only asks for a graceful stop; the second raises KeyboardInterrupt, which
    every entry point ends with one line and exit 130."""
    import signal
    from megatron_vist2.errors import run_cli
    from megatron_vist2.training.signals import StopOnSignal
    stop = StopOnSignal()
    try:
        signal.raise_signal(signal.SIGINT)      # this thread: handled before the next line
        assert stop.received == "SIGINT received" and stop.should_stop()

        def main():
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(SystemExit) as exc:
            run_cli(main)
    finally:
        stop.restore()
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: second Ctrl-C: stopping at once" in err and "Traceback" not in err
