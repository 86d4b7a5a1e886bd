"""OCR read-back (metrics/readback.py) against independent references: greedy decoding by
brute force (a fresh forward over the growing prefix V_i M_i T_i[:t] at every step, M_i the
read-back marker: no placeholders,
no row of fixed length), the greedy fixed point under teacher forcing, and a reader that knows the
answer (CER 0) or always says the same token (CER from edit distances computed here)."""
import numpy as np
import pytest
import torch

from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def setup(tiny_data, dist_env):
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.renderer import Renderer
    from megatron_vist2.metrics.readback import held_out_chunks
    cfg, tok, _, model = tiny_model(tiny_data, "model.init_std=0.1")
    mc = cfg.model
    L, m = mc.chunk.text_tokens, mc.visual_tokens_per_chunk
    chunks = held_out_chunks(open_indexed(tiny_data.valid, tok), L, 3)
    return cfg, tok, model, Renderer.from_model_config(mc), chunks, L, m


def prefix(batch, n):
    """The batch cut to its first ``n`` positions (the images stay: one per row)."""
    from dataclasses import fields
    from megatron_vist2.models.attention import TokenLayout
    from megatron_vist2.models.vist2 import Vist2Batch
    cut = TokenLayout(**{f.name: getattr(batch.layout, f.name)[:, :n] for f in fields(batch.layout)})
    return Vist2Batch(batch.tokens[:, :n].clone(), cut, batch.images, batch.labels[:, :n], batch.loss_mask[:, :n])


def test_greedy_readback_equals_brute_force_decoding(setup):
    """The placeholder loop reads what growing the row token by token reads, and its result is
    a fixed point of teacher forcing: fed back as the text, every token is the argmax after it."""
    from megatron_vist2.metrics.readback import greedy_readback, readback_batch
    cfg, tok, model, renderer, chunks, L, m = setup
    V = tok.vocab_size
    batch = readback_batch(chunks, renderer, tok.decode, L, m)
    with torch.no_grad():
        got = greedy_readback(model, batch, m, L, V)
        want = torch.zeros(len(chunks), L, dtype=torch.long)
        for t in range(L):                       # V_i M_i T_i[:t] -> the next token
            b = prefix(batch, m + 1 + t)
            b.tokens[:, m + 1:m + 1 + t] = want[:, :t]
            want[:, t] = model(b)[m + t, :, :V].argmax(-1)
        assert torch.equal(got, want)
        assert len(set(got.flatten().tolist())) > 1          # not a constant read (the test would be weak)
        fed = batch.tokens.clone()
        fed[:, m + 1:m + 1 + L] = got
        logits = model(type(batch)(fed, batch.layout, batch.images, batch.labels, batch.loss_mask))
        assert torch.equal(logits[m:m + L, :, :V].argmax(-1).T, got)


def levenshtein(a, b):
    """The textbook dynamic programme (insert, delete, substitute: cost 1 each)."""
    d = np.arange(len(b) + 1)
    for i, ca in enumerate(a, 1):
        prev, d[0] = d.copy(), i
        for j, cb in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ca != cb))
    return int(d[-1])


class Oracle:
    """A "model" that answers each read-back position with a one-hot logit on ``pick(labels)``."""
    def __init__(self, vocab, pick):
        self.vocab, self.pick = vocab, pick

    def __call__(self, batch):
        logits = torch.zeros(*batch.tokens.shape, self.vocab)
        logits.scatter_(-1, self.pick(batch.labels)[..., None], 1.0)
        return logits.transpose(0, 1)             # [seq, batch, vocab] as the model returns


def test_a_reader_that_knows_the_text_scores_cer_zero(setup):
    from megatron_vist2.metrics.readback import ocr_readback
    cfg, tok, model, renderer, chunks, L, m = setup
    r = ocr_readback(Oracle(tok.vocab_size, lambda labels: labels), chunks, renderer, tok, L, m, batch_size=2)
    assert r["cer"] == 0.0 and r["exact_match"] == 1.0 and r["chunks"] == len(chunks)
    assert sum(v["chunks"] for v in r["by_font_size"].values()) == len(chunks)


def test_a_constant_reader_scores_the_edit_distance(setup):
    """Always the same token: the CER is the Levenshtein distance of its decoded repetition to the
    chunk's text, computed here by a plain dynamic programme over the decoded strings."""
    from megatron_vist2.data.renderer import chunk_text
    from megatron_vist2.metrics.readback import ocr_readback
    cfg, tok, model, renderer, chunks, L, m = setup
    token = int(chunks[0][3])
    r = ocr_readback(Oracle(tok.vocab_size, lambda labels: torch.full_like(labels, token)), chunks, renderer,
                     tok, L, m)

    hyp = chunk_text(tok.decode([token] * L))
    refs = [chunk_text(tok.decode(c.tolist())) for c in chunks]
    want = sum(levenshtein(hyp, ref) for ref in refs) / sum(len(ref) for ref in refs)
    assert r["cer"] == pytest.approx(want, rel=1e-12) and r["exact_match"] == 0.0


def test_blind_reading_uses_another_chunks_image(setup):
    """A reader that recognises each image perfectly (a lookup from the image's bytes to its
    chunk): CER 0 on its own images; read from the batch's images rotated by one, each chunk gets
    its neighbour's text, and the blind CER is those Levenshtein distances."""
    from megatron_vist2.data.renderer import chunk_text
    from megatron_vist2.metrics.readback import ocr_readback
    cfg, tok, model, renderer, chunks, L, m = setup
    text_of = {renderer.render_chunk(c, tok.decode).tobytes(): c for c in chunks}

    def reader(batch):
        logits = torch.zeros(*batch.tokens.shape, tok.vocab_size)
        for b in range(batch.tokens.shape[0]):
            ids = torch.as_tensor(text_of[batch.images[b].numpy().tobytes()])
            logits[b, torch.arange(m, m + L), ids] = 1.0        # the marker, then the text
        return logits.transpose(0, 1)
    r = ocr_readback(reader, chunks, renderer, tok, L, m)
    assert r["cer"] == 0.0
    refs = [chunk_text(tok.decode(c.tolist())) for c in chunks]
    want = sum(levenshtein(refs[i - 1], refs[i]) for i in range(len(refs))) / sum(map(len, refs))
    assert r["blind"]["cer"] == pytest.approx(want, rel=1e-12) and r["blind"]["chunks"] == len(chunks)
