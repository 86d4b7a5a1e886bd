"""Bad configs, tokenizers and datasets given to the trainer: each stops before any model is
built with the field or file named (cases: harness.Case)."""
import pytest

from tests.bad_input.harness import Case, check


def yaml_file(name, text, raw=False):
    def setup(ctx):
        path = ctx.tmp / name
        path.write_bytes(text) if raw else path.write_text(text)
    return setup


def with_tokenizer_file(content):
    def setup(ctx):
        (ctx.tmp / "bad.model").write_bytes(content)
    return setup


def truncated_dataset(ctx):
    import shutil
    for ext in ("bin", "idx", "json"):
        shutil.copy(f"{ctx.data.train}.{ext}", ctx.tmp / f"cut.{ext}")
    with open(ctx.tmp / "cut.bin", "r+b") as fh:
        fh.truncate(100)


def train_with(*extra):
    return lambda c: [*c.train, *extra]


def train_preset(name, *extra):
    return lambda c: ["--preset", str(c.tmp / name), *c.train[2:], *extra]


CASES = [
    Case("unknown-preset", "train", lambda c: ["--preset", "tiny-gpu"], ["unknown preset 'tiny-gpu'"]),
    Case("unknown-key", "train", train_with("model.llm.hiden_size=3"), ["unknown config key 'model.llm.hiden_size'"]),
    Case("override-without-equals", "train", train_with("train.steps"), ["override 'train.steps' must look like"]),
    Case("empty-field-name", "train", train_with("train..steps=3"), ["empty field name"]),
    Case("wrong-type", "train", train_with("train.steps=many"), ["train.steps: expected int"]),
    Case("empty-yaml", "train", train_preset("empty.yaml"), ["empty.yaml is empty"], yaml_file("empty.yaml", "")),
    Case("yaml-not-mapping", "train", train_preset("list.yaml"), ["expected a mapping at the top level"],
         yaml_file("list.yaml", "- a\n- b\n")),
    Case("yaml-syntax", "train", train_preset("broken.yaml"), ["broken.yaml: not valid YAML"],
         yaml_file("broken.yaml", "model: {llm: [\n")),
    Case("yaml-not-utf8", "train", train_preset("latin1.yaml"), ["latin1.yaml: not UTF-8 text (byte"],
         yaml_file("latin1.yaml", b"base: tiny-cpu\n# caf\xe9\n", raw=True)),
    Case("relative-base-missing", "train", train_preset("child.yaml"), ["base 'nope.yaml' not found",
                                                                       "relative to the including file"],
         yaml_file("child.yaml", "base: nope.yaml\n")),
    Case("base-loop", "train", train_preset("loop.yaml"), ["loops back to itself"],
         yaml_file("loop.yaml", "base: loop.yaml\n")),
    Case("relative-base-beside-file-is-read", "train", train_preset("sub/child.yaml"),
         ["unknown config key 'train.stepz'"],     # proves parent.yaml beside child.yaml was read
         lambda c: ((c.tmp / "sub").mkdir(), (c.tmp / "sub" / "parent.yaml").write_text(
             "base: tiny-cpu\ntrain: {stepz: 3}\n"), (c.tmp / "sub" / "child.yaml").write_text(
             "base: parent.yaml\n"))),
    Case("nan-lr", "train", train_with("optim.lr=.nan"), ["optim.lr must be a finite number"]),
    Case("inf-min-lr", "train", train_with("optim.min_lr=.inf"), ["optim.min_lr must be a finite number"]),
    Case("negative-lr", "train", train_with("optim.lr=-1"), ["optim.lr must be > 0"]),
    Case("beta2-one", "train", train_with("optim.beta2=1.0"), ["optim.beta2 must be in [0, 1)"]),
    Case("eps-zero", "train", train_with("optim.eps=0"), ["optim.eps must be > 0"]),
    Case("dropout-over-one", "train", train_with("model.llm.hidden_dropout=1.5"),
         ["model.llm.hidden_dropout must be in [0, 1)"]),
    Case("absurd-size", "train", train_with("model.llm.hidden_size=1000000", "model.llm.ffn_hidden_size=100000000"),
         ["parameters", "far beyond any machine"]),
    Case("memory-estimate", "train", train_with("model.llm.hidden_size=65536", "model.llm.ffn_hidden_size=262144",
                                                 "model.llm.num_layers=64"),
         ["GiB per rank", "planner's estimate"]),
    Case("zero-steps", "train", train_with("train.steps=0"), ["train.steps must be a positive integer"]),
    Case("tp-not-dividing-heads", "train", train_with("parallel.tensor_parallel=3"),
         ["parallel.tensor_parallel (3) must divide model.llm.num_heads (4)"]),
    Case("zero-stage-5", "train", train_with("parallel.zero_stage=5"), ["parallel.zero_stage must be 0, 1, 2 or 3"]),
    Case("dtype-fp16", "train", train_with("train.dtype=fp16"), ["train.dtype must be 'auto', 'fp32' or 'bf16'"]),
    Case("readback-share-2", "train", train_with("data.readback_fraction=2"), ["data.readback_fraction must be in [0, 1]"]),
    Case("keep-last-negative", "train", train_with("checkpoint.keep_last=-1"), ["checkpoint.keep_last must be >= 0"]),
    Case("freeze-unknown-part", "train", train_with("train.freeze=[front.visoin]"), ["'front.visoin' names no part"]),
    # run health (train.health)
    Case("health-no-skips", "train", train_with("train.health.max_consecutive_skips=0"),
         ["train.health.max_consecutive_skips must be >= 1"]),
    Case("health-spike-mode", "train", train_with("train.health.spike_mode=restart"),
         ["train.health.spike_mode must be 'off', 'log' or 'rollback'"]),
    Case("health-rollback-without-saves", "train", train_with("train.health.spike_mode=rollback"),
         ["train.health.spike_mode=rollback needs checkpoints", "checkpoint.save_interval > 0"]),
    Case("health-window-one", "train", train_with("train.health.spike_window=1"), ["train.health.spike_window must be >= 2"]),
    Case("health-zscore-negative", "train", train_with("train.health.spike_zscore=-3"),
         ["train.health.spike_zscore must be > 0"]),
    Case("health-skip-batches-negative", "train", train_with("train.health.spike_skip_batches=-1"),
         ["train.health.spike_skip_batches must be >= 0"]),
    Case("health-watchdog-multiple", "train", train_with("train.health.watchdog_multiple=0.5"),
         ["train.health.watchdog_multiple must be > 1", "or 0 (no watchdog)"]),
    Case("health-watchdog-floor", "train", train_with("train.health.watchdog_floor_s=0"),
         ["train.health.watchdog_floor_s must be > 0"]),
    Case("seq-shorter-than-chunk", "train", train_with("data.seq_length=8"), ["data.seq_length (8) must hold at least one chunk"]),
    # tokenizer and data
    Case("tokenizer-missing", "train", lambda c: [*c.train, f"data.tokenizer={c.tmp}/none.model"],
         ["none.model' not found", "data.tokenizer"]),
    Case("tokenizer-not-sentencepiece", "train", lambda c: [*c.train, f"data.tokenizer={c.tmp}/bad.model"],
         ["bad.model' is not a sentencepiece model"], with_tokenizer_file(b"not a model")),
    Case("tokenizer-dir-empty", "train", lambda c: [*c.train, f"data.tokenizer={c.tmp}/tokdir"],
         ["tokdir' is not a Hugging Face tokenizer directory"], lambda c: (c.tmp / "tokdir").mkdir()),
    Case("vocab-size-mismatch", "train", train_with("model.llm.vocab_size=2048"),
         ["model.llm.vocab_size is 2048 but the tokenizer", "set model.llm.vocab_size=512"]),
    Case("dataset-missing", "train", lambda c: [*c.train, f"data.train_prefix={c.tmp}/none"],
         ["none.bin is missing"]),
    Case("dataset-truncated", "train", lambda c: [*c.train, f"data.train_prefix={c.tmp}/cut"],
         ["cut.bin has 100 bytes, its manifest expects"], truncated_dataset),
    Case("valid-dataset-missing", "train", lambda c: [*c.train, f"data.valid_prefix={c.tmp}/gone"],
         ["gone.bin is missing"]),
    Case("logging-dir-is-a-file", "train", lambda c: [*c.train, f"logging.dir={c.tmp}/afile"],
         ["logging.dir", "afile is not writable"], lambda c: (c.tmp / "afile").write_text("x")),
    Case("save-dir-is-a-file", "train", lambda c: [*c.train, f"checkpoint.save_dir={c.tmp}/afile"],
         ["checkpoint.save_dir", "afile is not writable"], lambda c: (c.tmp / "afile").write_text("x")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_config_or_data(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.data.root])
