"""Packing: every token lands exactly once, chunks never cross documents, rows never overflow."""
import numpy as np
import pytest

from megatron_vist2.data.packing import (max_chunks_per_segment, pack_segments, segment_document)
from megatron_vist2.models.attention import TEXT


@pytest.mark.parametrize("readback", [0.0, 0.3])
def test_tokens_conserved_and_rows_fit(readback):
    rng = np.random.default_rng(0)
    L, m, S = 8, 2, 64
    lengths = rng.integers(1, 200, size=60)
    segments = [s for d, n in enumerate(lengths)
                for s in segment_document(d, int(n), L, m, S, readback, rng)]
    rows = pack_segments(segments, L, m, S)
    covered = {d: np.zeros(n, int) for d, n in enumerate(lengths)}
    for row in rows:
        assert sum(s.row_tokens(L, m) for s in row) <= S
        for s in row:
            covered[s.doc_index][s.start:s.start + s.length] += 1
            assert s.num_chunks(L) <= max_chunks_per_segment(S, L, m, readback > 0)
            assert s.start % L == 0                    # chunks stay aligned to their document
    for d, cover in covered.items():
        assert (cover == 1).all(), d                   # every token exactly once, none dropped
    # documented bound: every row but the last wastes fewer than L + m tokens (the next chunk and
    # the image of the chunk before it), L + 2 m + 1 with read-back (also its own image and marker)
    bound = L + 2 * m + 1 if readback else L + m
    for row in rows[:-1]:
        assert S - sum(s.row_tokens(L, m) for s in row) < bound


def test_dataset_rows_hold_whole_documents(tiny_data):
    from megatron_vist2.config import load_config
    from megatron_vist2.data.dataset import PackedVist2Dataset
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from tests.conftest import tiny_overrides
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data))
    tok = load_tokenizer(cfg.data.tokenizer)
    indexed = open_indexed(cfg.data.train_prefix, tok)
    ds = PackedVist2Dataset(indexed, tok, cfg, seed=3)
    total = sum(int(indexed.lengths[d]) for d in range(len(indexed)))
    seen = 0
    for i in range(len(ds)):
        segs = ds.rows[i]
        seen += sum(s.length for s in segs)
    assert seen == total
    sample = ds[5]
    m = cfg.model.visual_tokens_per_chunk
    assert sample["images"].shape[0] * m == int((sample["kind"] == 1).sum())
    assert int((sample["kind"] == TEXT).sum()) == sum(s.length for s in ds.rows[ds.row_index(5)])


def test_readback_note_names_the_seq_length_that_keeps_the_segments():
    """tiny-cpu's rows (L 32, m 8, 272 tokens) hold 7 chunks per segment without read-back, 6 with
    it: the note says so, and at the seq_length it names both hold 7 (counted here by brute force:
    the most chunks n with n L + (n - 1) m <= S, and with n (L + m + 1) <= S)."""
    from megatron_vist2.data.packing import readback_shortens_segments
    L, m = 32, 8

    def most(S, cost):
        return max(n for n in range(1, 100) if cost(n) <= S)
    plain = most(272, lambda n: n * L + (n - 1) * m)
    assert plain == 7 and most(272, lambda n: n * (L + m + 1)) == 6
    note = readback_shortens_segments(272, L, m)
    assert "at most 6 chunks" in note and "against 7" in note and "data.seq_length=287" in note
    assert most(287, lambda n: n * (L + m + 1)) == 7 and most(287, lambda n: n * L + (n - 1) * m) == 7
    assert readback_shortens_segments(287, L, m) is None
