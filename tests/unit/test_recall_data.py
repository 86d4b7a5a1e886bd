"""tools/make_recall_data.py: every document is one row's history of the preset, its first
chunks exactly the source's text, each later chunk c word for word chunk c - 3 of the source;
windows follow each other through the source without overlap; the same command writes the same
bytes."""
import numpy as np

from tests.conftest import TEST_VOCAB


def make(tiny_data, tmp_path, out):
    import os
    from tools.make_recall_data import main
    for split, prefix in (("train", tiny_data.train), ("valid", tiny_data.valid)):
        for ext in (".bin", ".idx", ".json"):
            link = tmp_path / f"src_{split}{ext}"
            if not link.exists():
                os.symlink(prefix + ext, link)
    main(["--source", str(tmp_path / "src"), "--output-prefix", str(out), "--tokenizer", tiny_data.tokenizer,
          f"model.llm.vocab_size={TEST_VOCAB}"])


def test_recall_documents_restate_their_facts(tiny_data, tmp_path):
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_data.tokenizer)
    make(tiny_data, tmp_path, tmp_path / "recall")
    L, chunks, facts = 32, 7, 3                      # tiny-cpu: 272 = 7 x 32 + 6 x 8
    for split, prefix in (("train", tiny_data.train), ("valid", tiny_data.valid)):
        src, got = open_indexed(prefix, tok), open_indexed(str(tmp_path / f"recall_{split}"), tok)
        windows = [(d, w) for d in range(len(src)) for w in range(int(src.lengths[d]) // (chunks * L))]
        assert len(got) == len(windows) > 0
        assert got.manifest["recall"]["copied_tokens"] == len(windows) * (chunks - facts) * L
        for i, (d, w) in enumerate(windows):
            text = np.asarray(src.tokens(d), np.int64)[w * chunks * L:(w + 1) * chunks * L].reshape(chunks, L)
            doc = np.asarray(got.tokens(i), np.int64).reshape(chunks, L)
            np.testing.assert_array_equal(doc[:facts], text[:facts])
            for c in range(facts, chunks):
                np.testing.assert_array_equal(doc[c], text[c % facts])
    again = tmp_path / "again"
    make(tiny_data, tmp_path, again)
    for split in ("train", "valid"):
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"recall_{split}{ext}").read_bytes() == (tmp_path / f"again_{split}{ext}").read_bytes()
