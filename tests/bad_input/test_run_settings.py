"""Settings and records added since the first round, across entry points: run health, padded
vocabularies (model.llm.tokenizer_vocab_size), the controls (model.context text / window) in
train, generate, convert and inspect, a checkpoint config.yaml that is not plain YAML, an absurd
train.steps, an unwritable WANDB_DIR, glyphs the render font lacks in render_preview, and the
smaller tools' flags. Refused naming the field, flag or file; the deliberate trade-offs (a large
dataset file spot-checked, boxes for missing glyphs) said on the console."""
import pytest

from tests.bad_input.conftest import copy_ckpt, edit_saved_config, remanifest
from tests.bad_input.harness import Case, check, invoke

STEP = "step_0000002"


def train_with(*extra):
    return lambda c: [*c.train, *[e.format(tmp=c.tmp, ckpt=c.ckpt) for e in extra]]


def tool(*args):
    return lambda c: [a.format(tmp=c.tmp, ckpt=c.ckpt, data=c.data) for a in args]


def saved(edit):
    """A copy of the test checkpoint ({tmp}/copy) whose recorded config is edited."""
    return lambda ctx: edit_saved_config(copy_ckpt(ctx) / STEP, edit)


def python_tagged(ctx):
    """A copy whose config.yaml carries a python tag (re-manifested: sizes agree)."""
    d = copy_ckpt(ctx) / STEP
    text = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text("!!python/object/apply:os.system ['echo owned']\n" + text)
    remanifest(d)


def file_at(name):
    return lambda c: (c.tmp / name).write_text("a file, not a directory")


def changed_dataset(ctx):
    """A copy of the test training set with one byte of its .bin changed in place (same size)."""
    import shutil
    for ext in ("bin", "idx", "json"):
        shutil.copy(f"{ctx.data.train}.{ext}", ctx.tmp / f"changed.{ext}")
    with open(ctx.tmp / "changed.bin", "r+b") as fh:
        fh.seek(10)
        byte = fh.read(1)
        fh.seek(10)
        fh.write(bytes([byte[0] ^ 1]))


PYTAG = ["copy/step_0000002/config.yaml cannot be read as a checkpoint config", "no '!!python/...' tags"]
CONTROL = "model.context 'text' is a control without images"

CASES = [
    # run health, beyond the range checks of the first round
    Case("health-zscore-not-a-number", "train", train_with("train.health.spike_zscore=high"),
         ["train.health.spike_zscore: expected float"]),
    Case("health-zscore-nan", "train", train_with("train.health.spike_zscore=.nan"),
         ["train.health.spike_zscore must be a finite number"]),
    Case("health-unknown-field", "train", train_with("train.health.max_skips=3"),
         ["unknown config key 'train.health.max_skips'"]),
    Case("health-skips-not-integer", "train", train_with("train.health.max_consecutive_skips=2.5"),
         ["train.health.max_consecutive_skips: expected int"]),
    Case("freeze-everything", "train", train_with("train.freeze=[front,layers,head]"),
         ["freezes every part the run trains: nothing would train"]),
    Case("lr-multiplier-unknown-part", "train", train_with("optim.lr_multipliers={{front.bogus: 2}}"),
         ["'front.bogus' names no part of the model"]),
    Case("lr-multiplier-negative", "train", train_with("optim.lr_multipliers={{front.vision: -2}}"),
         ["optim.lr_multipliers must be > 0"]),
    # an absurd length
    Case("steps-absurd", "train", train_with("train.steps=1000000000000"),
         ["train.steps=1,000,000,000,000 would train on", "far beyond any run", "extra digits"]),
    Case("steps-absurd-in-model-size", "tools/model_size.py", tool("--preset", "tiny-cpu", "train.steps=10000000000000"),
         ["far beyond any run"]),
    # Weights & Biases' directory
    Case("wandb-dir-unwritable", "train", train_with("logging.wandb=true"),
         ["WANDB_DIR (environment variable)", "afile/wandb is not writable"], file_at("afile"),
         env={"WANDB_DIR": "{tmp}/afile/wandb"}),
    Case("wandb-logging-dir-unwritable", "train", train_with("logging.wandb=true", "logging.dir={tmp}/afile/logs"),
         ["logging.dir", "is not writable"], file_at("afile")),
    Case("wandb-mode-unknown", "train", train_with("logging.wandb=true", "logging.wandb_mode=cloud"),
         ["logging.wandb_mode must be"]),
    # padded vocabularies
    Case("padded-declared-above-rows", "train", train_with("model.llm.tokenizer_vocab_size=600"),
         ["model.llm.tokenizer_vocab_size"]),
    Case("padded-declared-not-the-tokenizer", "train",
         train_with("model.llm.vocab_size=1024", "model.llm.tokenizer_vocab_size=500"),
         ["has 512 pieces but model.llm.tokenizer_vocab_size is 500"]),
    Case("padded-undeclared-extra-rows", "train", train_with("model.llm.vocab_size=1024"),
         ["declare it with model.llm.tokenizer_vocab_size=512"]),
    Case("padded-declared-zero", "train", train_with("model.llm.tokenizer_vocab_size=0"),
         ["model.llm.tokenizer_vocab_size"]),
    Case("padded-generate-other-declaration", "generate", lambda c: ["--checkpoint", str(c.tmp / "copy"), "--prompt", "hi"],
         ["has 512 pieces but model.llm.tokenizer_vocab_size is 400"],
         saved(lambda cfg: cfg["model"]["llm"].update(tokenizer_vocab_size=400))),
    # the controls across entry points
    Case("control-text-with-readback", "train", train_with("model.context=text", "data.readback_fraction=0.5"),
         [CONTROL, "data.readback_fraction"]),
    Case("control-window-with-ocr-cer", "train", train_with("model.context=window", "train.ocr_cer_chunks=4"),
         ["model.context 'window' is a control without images", "train.ocr_cer_chunks"]),
    Case("control-text-freezing-vision", "train", train_with("model.context=text", "train.freeze=[front.vision]"),
         [CONTROL, "front.vision"]),
    Case("control-text-with-ocr-probe", "train", train_with("model.context=text", "train.ocr_probe_batches=1"),
         [CONTROL, "train.ocr_probe_batches"]),
    Case("control-unknown-context", "train", train_with("model.context=compressed"),
         ["model.context must be 'vist2', 'text' or 'window'"]),
    Case("control-resume-vist2-as-text", "train", train_with("model.context=text", "checkpoint.load_dir={ckpt}"),
         ["holds a different model", "model.context"]),
    Case("control-generate-unknown-context", "generate", lambda c: ["--checkpoint", str(c.tmp / "copy"), "--prompt", "hi"],
         ["model.context must be 'vist2', 'text' or 'window', got 'retro'"],
         saved(lambda cfg: cfg["model"].update(context="retro"))),
    Case("control-evaluate-unknown-context", "tools/evaluate.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/e"),
         ["--checkpoint", "model.context must be 'vist2', 'text' or 'window', got 'retro'"],
         saved(lambda cfg: cfg["model"].update(context="retro"))),
    Case("control-export-window-as-vist2", "tools/convert_checkpoint.py",
         tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o", "--vist2"),
         ["records model.context 'window'", "drop --vist2"], saved(lambda cfg: cfg["model"].update(context="window"))),
    # a checkpoint config.yaml that is not plain YAML, in every reader
    Case("pytag-resume", "train", train_with("checkpoint.load_dir={tmp}/copy"), PYTAG, python_tagged),
    Case("pytag-init-from", "train", train_with("checkpoint.init_from={tmp}/copy"), PYTAG, python_tagged),
    Case("pytag-generate", "generate", lambda c: ["--checkpoint", str(c.tmp / "copy"), "--prompt", "hi"], PYTAG, python_tagged),
    Case("pytag-export", "tools/convert_checkpoint.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o"),
         PYTAG, python_tagged),
    Case("pytag-reshard", "tools/reshard_checkpoint.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o"),
         PYTAG, python_tagged),
    Case("pytag-inspect", "tools/inspect_checkpoint.py", tool("{tmp}/copy"), PYTAG, python_tagged),
    Case("pytag-evaluate", "tools/evaluate.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/e"), PYTAG,
         python_tagged),
    Case("config-yaml-not-a-mapping", "tools/inspect_checkpoint.py", tool("{tmp}/copy"),
         ["config.yaml: expected a mapping of config fields, got list"],
         lambda c: (copy_ckpt(c), (c.tmp / "copy" / STEP / "config.yaml").write_text("- 1\n"), remanifest(c.tmp / "copy" / STEP))),
    # render_preview: the glyph rule of training; its flags
    Case("preview-missing-glyphs-warned", "tools/render_preview.py",
         tool("--text", "Fellow citizens 中华 ✓", "--out", "{tmp}/p.png"),
         ["have no glyph in model.render.font", "model.render.font=noto-sans-cjk-sc"], ok=True,
         verify=lambda c: (c.tmp / "p.png").is_file()),
    Case("preview-scale-zero", "tools/render_preview.py", tool("--text", "hi", "--scale", "0", "--out", "{tmp}/p.png"),
         ["--scale must be >= 1"]),
    Case("preview-chunks-zero", "tools/render_preview.py", tool("--chunks", "0", "--out", "{tmp}/p.png"),
         ["--chunks must be >= 1"]),
    Case("preview-out-under-a-file", "tools/render_preview.py", tool("--text", "hi", "--out", "{tmp}/afile/p.png"),
         ["--out", "afile"], file_at("afile")),
    Case("preview-text-too-long", "tools/render_preview.py", tool("--text", "word " * 400, "--out", "{tmp}/p.png"),
         ["does not fit"]),
    # the smaller tools' flags
    Case("inspect-data-prefix-missing", "tools/inspect_data.py",      # a tokenizer that exists: a clean clone has no data/
         tool("--prefix", "{tmp}/none", "--stats", "data.tokenizer={data.tokenizer}"),
         ["none.bin is missing"]),
    Case("inspect-data-row-negative", "tools/inspect_data.py",
         tool("--row", "-1", "--out", "{tmp}/r.png", "data.tokenizer={data.tokenizer}",
              "data.train_prefix={data.train}", "data.valid_prefix={data.valid}", "model.llm.vocab_size=512"),
         ["--row"]),
    Case("inspect-data-verify-changed-file", "tools/inspect_data.py",
         tool("--prefix", "{tmp}/changed", "--verify", "data.tokenizer={data.tokenizer}", "model.llm.vocab_size=512"),
         ["changed.bin", "differ"], changed_dataset),
    Case("block-report-tile-zero", "tools/block_mask_report.py", tool("--preset", "tiny-cpu", "--synthetic", "--block", "0"),
         ["--block must be >= 1, got 0"]),
    Case("block-report-readback-nan", "tools/block_mask_report.py",
         tool("--preset", "tiny-cpu", "--synthetic", "--readback", "nan"), ["--readback must be a share in [0, 1]"]),
    Case("block-report-seq-zero", "tools/block_mask_report.py", tool("--preset", "tiny-cpu", "--synthetic", "--seq", "0"),
         ["--seq must be >= L + m = 40", "got 0"]),
    Case("block-report-seq-beyond", "tools/block_mask_report.py",
         tool("--preset", "tiny-cpu", "--synthetic", "--seq", "100000000000"), ["counting a row's token pairs is quadratic"]),
    Case("model-size-bad-override", "tools/model_size.py", tool("--preset", "tiny-cpu", "model.llm.num_layers=x"),
         ["model.llm.num_layers: expected int"]),
    Case("reshard-shard-size-nan", "tools/reshard_checkpoint.py", tool("--checkpoint", "{ckpt}", "--out", "{tmp}/o",
                                                                     "--shard-gb", "nan"), ["--shard-gb must be > 0"]),
    Case("export-shard-size-inf", "tools/convert_checkpoint.py", tool("--checkpoint", "{ckpt}", "--out", "{tmp}/o",
                                                                     "--shard-gb", "inf"), ["--shard-gb must be"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_run_setting(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.ckpt, ctx.data.root])


@pytest.mark.parametrize("entry", ["train", "tools/render_preview.py"])
def test_a_spot_checked_dataset_file_is_said(entry, ctx, capsys, monkeypatch):
    """A dataset file above QUICK_FULL_BYTES is checked at sampled blocks only: the console says
    so, with the command that hashes it whole (here every file counts as large)."""
    from megatron_vist2.data import indexed
    monkeypatch.setattr(indexed, "QUICK_FULL_BYTES", 0)
    monkeypatch.setattr(indexed, "_SAMPLED_NOTED", set())
    args = ([*ctx.train, f"checkpoint.save_dir={ctx.tmp}/afile"] if entry == "train" else
            ["--out", str(ctx.tmp / "p.png"), f"data.tokenizer={ctx.data.tokenizer}",
             f"data.train_prefix={ctx.data.train}", "model.llm.vocab_size=512"])
    if entry == "train":
        (ctx.tmp / "afile").write_text("x")          # stop right after the data checks
    capsys.readouterr()
    code = invoke(entry, args)
    out = capsys.readouterr()
    assert code == (2 if entry == "train" else 0), out.err[-2000:]
    said = out.out + out.err
    assert f"{ctx.data.train}.bin" in said and "not hashed whole" in said, said[-2000:]
    assert f"inspect_data.py --prefix {ctx.data.train} --verify" in said
