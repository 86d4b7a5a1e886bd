"""Bad checkpoints given to the trainer, and bad arguments to the conversion, inspection and
planning tools: refused with the path or flag named, no file of any checkpoint touched."""
import shutil

import pytest

from tests.bad_input.conftest import copy_ckpt, edit_manifest, edit_saved_config
from tests.bad_input.harness import Case, check

STEP = "step_0000002"


def only_partial(ctx):
    (ctx.tmp / "half" / "step_0000004.partial").mkdir(parents=True)
    (ctx.tmp / "half" / "step_0000004.partial" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)


def damaged(kind):
    def setup(ctx):
        d = copy_ckpt(ctx) / STEP
        if kind == "missing-file":
            next(d.glob("*.safetensors")).unlink()
        elif kind == "bad-marker":
            (d / "complete.json").write_text("{not json")
        elif kind == "latest-dangling":
            (d.parent / "latest").write_text("step_0000009")
        elif kind == "other-tokenizer":
            edit_manifest(d, tokenizer_sha256="ab" * 32, tokenizer_path="/elsewhere/other.model")
        elif kind == "newer-than-latest":
            shutil.copytree(d, d.parent / "step_0000005")
        elif kind == "no-stored-tokenizer":
            (d / "tokenizer.model").unlink()
            edit_manifest(d, tokenizer_path=str(ctx.tmp / "moved.model"))
            edit_saved_config(d, lambda cfg: cfg["data"].update(tokenizer="relative/tok.model"))
    return setup


def other_model(ctx):
    edit_saved_config(copy_ckpt(ctx) / STEP, lambda cfg: cfg["model"]["llm"].update(num_layers=2))


def context_of(value):
    """A checkpoint whose config.yaml records model.context ``value``."""
    return lambda ctx: edit_saved_config(copy_ckpt(ctx) / STEP, lambda cfg: cfg["model"].update(context=value))


UNKNOWN_CONTEXT = ["copy/step_0000002/config.yaml records a value this version of megatron_vist2 does not know",
                   "model.context must be 'vist2', 'text' or 'window', got 'compressed2'"]


def nonempty(name):
    return lambda c: ((c.tmp / name).mkdir(), (c.tmp / name / "keep.txt").write_text("someone's file"))


def train_with(*extra):
    return lambda c: [*c.train, *[e.format(tmp=c.tmp, ckpt=c.ckpt) for e in extra]]


def tool(*args):
    return lambda c: [a.format(tmp=c.tmp, ckpt=c.ckpt, hf=c.hf) for a in args]


CASES = [
    # training from / into checkpoint directories
    Case("load-dir-missing", "train", train_with("checkpoint.load_dir={tmp}/nope"),
         ["nope does not exist or is not a directory (checkpoint.load_dir)"]),
    Case("load-dir-empty", "train", train_with("checkpoint.load_dir={tmp}"), ["cannot read the 'latest' file"]),
    Case("load-dir-only-unfinished", "train", train_with("checkpoint.load_dir={tmp}/half"),
         ["holds only an unfinished save (step_0000004.partial)"], only_partial),
    Case("load-dir-file-missing", "train", train_with("checkpoint.load_dir={tmp}/copy"),
         ["is missing (listed in", "damaged"], damaged("missing-file")),
    Case("load-dir-bad-marker", "train", train_with("checkpoint.load_dir={tmp}/copy"),
         ["complete.json cannot be read"], damaged("bad-marker")),
    Case("load-dir-latest-dangling", "train", train_with("checkpoint.load_dir={tmp}/copy"),
         ["names 'step_0000009', but"], damaged("latest-dangling")),
    Case("load-dir-other-model", "train", train_with("checkpoint.load_dir={tmp}/copy"),
         ["holds a different model", "model.llm.num_layers: checkpoint 2, this run 4"], other_model),
    Case("resume-other-tokenizer", "train", train_with("checkpoint.load_dir={tmp}/copy"),
         ["checkpoint.load_dir", "/elsewhere/other.model", "checkpoint.allow_new_tokenizer"],
         damaged("other-tokenizer")),
    Case("init-from-other-tokenizer", "train", train_with("checkpoint.init_from={tmp}/copy"),
         ["checkpoint.init_from", "was trained with the tokenizer /elsewhere/other.model"],
         damaged("other-tokenizer")),
    Case("save-dir-complete-no-resume", "train", lambda c: [*c.train, f"checkpoint.save_dir={c.tmp}/copy",
                                                           "checkpoint.auto_resume=false"],
         ["already holds complete checkpoints (step_0000002)", "checkpoint.auto_resume is false"],
         lambda c: copy_ckpt(c)),
    Case("save-dir-complete-init-from", "train", lambda c: [*c.train, f"checkpoint.save_dir={c.tmp}/copy",
                                                           "checkpoint.auto_resume=false", f"checkpoint.init_from={c.ckpt}"],
         ["already holds complete checkpoints", "checkpoint.init_from starts a new stage"], lambda c: copy_ckpt(c)),
    Case("save-dir-newer-than-latest", "train", lambda c: [*c.train, f"checkpoint.save_dir={c.tmp}/copy"],
         ["newer than the one this run resumes from (step_0000005", "echo step_0000005 >"],
         damaged("newer-than-latest")),
    Case("load-dir-older-than-save-dir", "train", lambda c: [*c.train, f"checkpoint.save_dir={c.tmp}/copy",
                                                             f"checkpoint.load_dir={c.ckpt}"],
         ["holds complete checkpoints newer than the one this run resumes from"], damaged("newer-than-latest")),
    Case("load-dir-unknown-context", "train", train_with("checkpoint.load_dir={tmp}/copy"), UNKNOWN_CONTEXT,
         context_of("compressed2")),
    # conversion and inspection tools
    Case("export-unknown-context", "tools/convert_checkpoint.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o"),
         UNKNOWN_CONTEXT, context_of("compressed2")),
    Case("export-control-as-vist2", "tools/convert_checkpoint.py",
         tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o", "--vist2"),
         ["--vist2 exports the VIST2 model", "records model.context 'text'", "drop --vist2"], context_of("text")),
    Case("export-out-not-empty", "tools/convert_checkpoint.py", tool("--checkpoint", "{ckpt}", "--out", "{tmp}/out"),
         ["--out", "already exists and is not empty"], nonempty("out")),
    Case("export-out-is-file", "tools/convert_checkpoint.py", tool("--checkpoint", "{ckpt}", "--out", "{tmp}/f"),
         ["exists and is a file"], lambda c: (c.tmp / "f").write_text("x")),
    Case("export-checkpoint-missing", "tools/convert_checkpoint.py", tool("--checkpoint", "{tmp}/none", "--out", "{tmp}/o"),
         ["none does not exist"]),
    Case("export-only-unfinished", "tools/convert_checkpoint.py", tool("--checkpoint", "{tmp}/half", "--out", "{tmp}/o"),
         ["holds only an unfinished save"], only_partial),
    Case("export-shard-size-zero", "tools/convert_checkpoint.py",
         tool("--checkpoint", "{ckpt}", "--out", "{tmp}/o", "--shard-gb", "0"), ["--shard-gb must be > 0"]),
    Case("export-without-tokenizer", "tools/convert_checkpoint.py", tool("--checkpoint", "{tmp}/copy", "--out", "{tmp}/o"),
         ["the tokenizer of", "cannot be found", "--tokenizer"], damaged("no-stored-tokenizer")),
    Case("export-wrong-tokenizer-flag", "tools/convert_checkpoint.py",
         tool("--checkpoint", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "{tmp}/none.model"), ["none.model' not found"]),
    Case("reshard-into-another-run", "tools/reshard_checkpoint.py", tool("--checkpoint", "{ckpt}", "--out", "{tmp}/other"),
         ["already exists and is not empty", "latest"],
         lambda c: (shutil.copytree(c.ckpt, c.tmp / "other"),
                    (c.tmp / "other" / STEP).rename(c.tmp / "other" / "step_0000007"),
                    (c.tmp / "other" / "latest").write_text("step_0000007"))),
    Case("reshard-checkpoint-missing", "tools/reshard_checkpoint.py", tool("--checkpoint", "{tmp}/x", "--out", "{tmp}/o"),
         ["x does not exist"]),
    Case("reshard-shard-size-negative", "tools/reshard_checkpoint.py",
         tool("--checkpoint", "{ckpt}", "--out", "{tmp}/o", "--shard-gb", "-1"), ["--shard-gb must be > 0"]),
    Case("inspect-missing", "tools/inspect_checkpoint.py", tool("{tmp}/none"), ["none does not exist"]),
    Case("inspect-only-unfinished", "tools/inspect_checkpoint.py", tool("{tmp}/half"),
         ["holds only an unfinished save"], only_partial),
    Case("import-missing-dir", "tools/import_hf.py", tool("--preset", "tiny-cpu", "--llm", "{tmp}/none", "--out", "{tmp}/o"),
         ["--llm", "none does not exist"]),
    Case("import-siglip-missing-dir", "tools/import_hf.py",
         tool("--preset", "tiny-cpu", "--siglip", "{tmp}/none", "--out", "{tmp}/o"), ["--siglip", "none does not exist"]),
    Case("import-no-config", "tools/import_hf.py", tool("--preset", "tiny-cpu", "--llm", "{tmp}/empty", "--out", "{tmp}/o"),
         ["config.json is missing"], lambda c: (c.tmp / "empty").mkdir()),
    Case("import-unsupported-architecture", "tools/import_hf.py",
         tool("--preset", "tiny-cpu", "--llm", "{tmp}/gpt2", "--out", "{tmp}/o"), ["model_type 'gpt2' is not supported"],
         lambda c: ((c.tmp / "gpt2").mkdir(), (c.tmp / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}'))),
    Case("import-config-json-invalid", "tools/import_hf.py",
         tool("--preset", "tiny-cpu", "--llm", "{tmp}/bad", "--out", "{tmp}/o"), ["config.json is not valid JSON"],
         lambda c: ((c.tmp / "bad").mkdir(), (c.tmp / "bad" / "config.json").write_text('{"model_type": '))),
    Case("import-contradicting-override", "tools/import_hf.py",
         tool("--preset", "tiny-cpu", "--llm", "{hf}", "--out", "{tmp}/o", "model.llm.rope_theta=500.0"),
         ["rope_theta = 10000.0 but model.llm.rope_theta = 500.0", "set model.llm.rope_theta=10000.0"]),
    Case("import-out-not-empty", "tools/import_hf.py", tool("--preset", "tiny-cpu", "--llm", "{hf}", "--out", "{tmp}/out"),
         ["already exists and is not empty"], nonempty("out")),
    Case("plan-world-zero", "tools/plan_layouts.py", tool("--preset", "8b", "--world", "0"), ["--world must be >= 1"]),
    Case("plan-memory-zero", "tools/plan_layouts.py", tool("--preset", "8b", "--world", "8", "--gpu-memory-gib", "0"),
         ["--gpu-memory-gib must be > 0"]),
    Case("dry-run-world-zero", "tools/dry_run.py", tool("--preset", "8b", "--world", "0"), ["--world must be >= 1"]),
    Case("model-size-unknown-preset", "tools/model_size.py", tool("--preset", "9b"), ["unknown preset '9b'"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_checkpoint_or_tool_input(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.ckpt, ctx.data.root, ctx.hf])
