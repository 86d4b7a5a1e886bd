"""Bad raw inputs given to tools/preprocess_data.py and tools/train_tokenizer.py through the
readers added since the first round (.jsonl/.gz/.zst, Parquet, Arrow, Hugging Face datasets
directories, folders of .txt, globs, @lists): each is refused naming the file (with the line,
row or byte where it applies) and what to do, nothing written."""
import gzip
import json

import pytest

from tests.bad_input.harness import Case, check


def write(name, data):
    """Setup: {tmp}/name with ``data`` (bytes, text, or a list of JSON records one per line)."""
    def setup(ctx):
        path = ctx.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, list):
            path.write_text("".join(json.dumps(r) + "\n" for r in data))
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return setup


def both(*setups):
    return lambda ctx: [s(ctx) for s in setups]


def gz(records, cut=None):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    return data[:cut] if cut else data


def parquet(name, columns):
    def setup(ctx):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table(columns), str(ctx.tmp / name))
    return setup


def hf_dataset_dict(splits):
    def setup(ctx):
        d = ctx.tmp / "ds"
        d.mkdir()
        (d / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
    return setup


def pre(*inputs, flag="--corpus", extra=()):
    return lambda c: [flag, *[i.format(tmp=c.tmp) for i in inputs], "--tokenizer", c.data.tokenizer,
                      "--output-prefix", str(c.tmp / "out" / "d"), "--no-progress",
                      *[e.format(tmp=c.tmp, data=c.data) for e in extra]]


def tok(*inputs, extra=()):
    return lambda c: ["--corpus", *[i.format(tmp=c.tmp) for i in inputs], "--output", str(c.tmp / "t.model"),
                      *extra]


GOOD = [{"text": "Fellow citizens of the Senate and of the House of Representatives."}] * 3
P = "tools/preprocess_data.py"

CASES = [
    Case("pre-input-missing", P, pre("{tmp}/none.jsonl"), ["corpus '", "none.jsonl' not found"]),
    Case("pre-glob-matches-nothing", P, pre("{tmp}/shards/*.jsonl.zst"), ["no file matches the glob"]),
    Case("pre-unknown-format", P, pre("{tmp}/a.csv"), ["a.csv: unknown format", ".jsonl"], write("a.csv", "text\nhi\n")),
    Case("pre-jsonl-not-json", P, pre("{tmp}/a.jsonl"), ["a.jsonl:2: expected a JSON object with \"text\""],
         write("a.jsonl", json.dumps(GOOD[0]) + "\n{not json\n")),
    Case("pre-jsonl-other-field", P, pre("{tmp}/a.jsonl"), ["a.jsonl:1: expected a JSON object with \"text\""],
         write("a.jsonl", [{"content": "hello"}])),
    Case("pre-jsonl-field-not-text", P, pre("{tmp}/a.jsonl"), ["a.jsonl:1: field \"text\" is int, expected text"],
         write("a.jsonl", [{"text": 5}])),
    Case("pre-jsonl-empty-text", P, pre("{tmp}/a.jsonl"), ["a.jsonl:2: empty \"text\"; remove the record"],
         write("a.jsonl", [GOOD[0], {"text": "   "}])),
    Case("pre-jsonl-array-line", P, pre("{tmp}/a.jsonl"), ["a.jsonl:1: expected a JSON object"],
         write("a.jsonl", "[1, 2]\n")),
    Case("pre-jsonl-not-utf8", P, pre("{tmp}/a.jsonl"), ["a.jsonl: byte 13 (line 1) is not valid UTF-8", "iconv"],
         write("a.jsonl", b'{"text": "caf\xe9"}\n')),
    Case("pre-gz-truncated", P, pre("{tmp}/a.jsonl.gz"), ["a.jsonl.gz: corrupt or truncated gz data"],
         write("a.jsonl.gz", gz(GOOD * 50, cut=60))),
    Case("pre-gz-not-gzip", P, pre("{tmp}/a.jsonl.gz"), ["a.jsonl.gz: corrupt or truncated gz data"],
         write("a.jsonl.gz", json.dumps(GOOD[0]) + "\n")),
    Case("pre-zst-not-zstd", P, pre("{tmp}/a.jsonl.zst"), ["a.jsonl.zst: corrupt or truncated zst data"],
         write("a.jsonl.zst", b"this is not zstandard data at all\n")),
    Case("pre-parquet-no-text-column", P, pre("{tmp}/a.parquet"),
         ["a.parquet has no column \"text\" (its columns: body)", "--text-column"], parquet("a.parquet", {"body": ["x"]})),
    Case("pre-parquet-column-not-text", P, pre("{tmp}/a.parquet"), ["a.parquet: column \"text\" holds int64, expected text"],
         parquet("a.parquet", {"text": [1, 2]})),
    Case("pre-parquet-empty-row", P, pre("{tmp}/a.parquet"), ["a.parquet row 1: empty \"text\""],
         parquet("a.parquet", {"text": ["some text", ""]})),
    Case("pre-parquet-not-parquet", P, pre("{tmp}/a.parquet"), ["a.parquet is not a readable parquet file"],
         write("a.parquet", b"PAR1 but not really")),
    Case("pre-arrow-not-arrow", P, pre("{tmp}/a.arrow"), ["a.arrow is not a readable arrow file"],
         write("a.arrow", b"not arrow")),
    Case("pre-datasets-dir-without-split", P, pre("{tmp}/ds"), ["has no split 'train' (it has: test)", "--hf-split"],
         hf_dataset_dict(["test"])),
    Case("pre-datasets-dir-bad-state", P, pre("{tmp}/ds2"), ["state.json is not a Hugging Face datasets state file"],
         write("ds2/state.json", "{broken")),
    Case("pre-folder-without-inputs", P, pre("{tmp}/empty"), ["holds no .txt files and no data files"],
         write("empty/notes.md", "nothing")),
    Case("pre-txt-empty-document", P, pre("{tmp}/txt"), ["b.txt: empty document"],
         both(write("txt/a.txt", "A speech."), write("txt/b.txt", "  \n"))),
    Case("pre-txt-not-utf8", P, pre("{tmp}/txt"), ["a.txt: byte 3 is not valid UTF-8"], write("txt/a.txt", b"caf\xe9")),
    Case("pre-input-given-twice", P, pre("{tmp}/a.jsonl", "{tmp}/*.jsonl"), ["a.jsonl is given twice"],
         write("a.jsonl", GOOD)),
    Case("pre-list-missing", P, pre("@{tmp}/list.txt"), ["cannot read the list of inputs", "list.txt"]),
    Case("pre-list-names-missing-file", P, pre("@{tmp}/list.txt"), ["gone.jsonl' not found"],
         write("list.txt", "# inputs\n/nonexistent/gone.jsonl\n")),
    Case("pre-instruction-without-response", P, pre("{tmp}/chat.jsonl", flag="--instruction"),
         ["chat.jsonl:1: expected a JSON object with \"prompt\" and \"response\" fields"],
         write("chat.jsonl", [{"prompt": "hi"}])),
    Case("pre-instruction-from-txt-folder", P, pre("{tmp}/txt", flag="--instruction"),
         ["instruction data must have prompt and response fields", "is a folder of .txt files"],
         write("txt/a.txt", "text")),
    Case("pre-workers-zero", P, pre("{tmp}/a.jsonl", extra=("--workers", "0")), ["--workers must be >= 1"],
         write("a.jsonl", GOOD)),
    Case("pre-split-not-numbers", P, pre("{tmp}/a.jsonl", extra=("--split", "a,b,c")), ["--split"],
         write("a.jsonl", GOOD)),
    Case("pre-split-all-zero", P, pre("{tmp}/a.jsonl", extra=("--split", "0,0,0")), ["--split"],
         write("a.jsonl", GOOD)),
    Case("pre-tokenizer-missing", P, lambda c: ["--corpus", "sotu", "--tokenizer", str(c.tmp / "none.model"),
                                                "--output-prefix", str(c.tmp / "o"), "--no-progress"],
         ["none.model' not found"]),
    Case("pre-output-under-a-file", P, lambda c: [*pre("{tmp}/a.jsonl")(c)[:-3], "--output-prefix",
                                                  str(c.tmp / "afile" / "x"), "--no-progress"],
         ["Not a directory", "afile"], both(write("a.jsonl", GOOD), write("afile", "x"))),
    Case("pretok-output-under-a-file", "tools/train_tokenizer.py",
         lambda c: ["--corpus", str(c.tmp / "a.jsonl"), "--output", str(c.tmp / "afile" / "t.model")],
         ["afile", "the file system refused"], both(write("a.jsonl", GOOD), write("afile", "x"))),
    Case("pretok-vocab-zero", "tools/train_tokenizer.py", tok("{tmp}/a.jsonl", extra=("--vocab-size", "0")),
         ["--vocab-size must be >= 1"], write("a.jsonl", GOOD)),
    Case("pretok-special-tokens-twice", "tools/train_tokenizer.py",
         tok("{tmp}/a.jsonl", extra=("--vocab-size", "60", "--special-tokens", "<x>,<x>")),
         ["<x> is already defined"], write("a.jsonl", GOOD * 30)),
    Case("pretok-vocab-too-large-for-corpus", "tools/train_tokenizer.py",
         tok("{tmp}/a.jsonl", extra=("--vocab-size", "100000")), ["sentencepiece training for", "failed"],
         write("a.jsonl", GOOD)),
    Case("pretok-input-missing", "tools/train_tokenizer.py", tok("{tmp}/none.parquet"), ["none.parquet' not found"]),
    Case("pretok-jsonl-other-field", "tools/train_tokenizer.py", tok("{tmp}/a.jsonl"),
         ["a.jsonl:1: expected a JSON object with \"text\""], write("a.jsonl", [{"body": "x"}])),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_corpus_input(case, ctx, capsys):
    check(case, ctx, capsys, [ctx.data.root])
