"""Helpers shared by the inference tests (single process and tensor-parallel)."""
import numpy as np
import torch
from megatron.core import tensor_parallel

from megatron_vist2.data.dataset import collate
from megatron_vist2.data.packing import PER_TOKEN, Segment, assemble_row
from megatron_vist2.models.attention import VISUAL


def streams(ds, lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:                       # real text, so renders look like training renders
        d = int(rng.integers(0, len(ds.indexed)))
        out.append([int(t) for t in ds.indexed.tokens(d, 0, n)])
    return out


@torch.no_grad()
def teacher_forced(model, ds, stream, context: str = "vist2"):
    """Training forward over the stream as one segment (the row of ``context``, the model's
    or a control's) -> {target index: logits}."""
    L, m = ds.L, ds.m
    seg = Segment(0, 0, len(stream), (False,) * (-(-len(stream) // L)))
    row = assemble_row([seg], [np.asarray(stream)], L, m, ds.S, context=context)
    sample = {k: getattr(row, k) for k in PER_TOKEN}
    sample["images"] = np.stack([ds.renderer.render(ds.tokenizer.decode(c)) for c in row.image_chunks]) \
        if row.image_chunks else np.zeros((0, ds.renderer.height, ds.renderer.width), np.uint8)
    logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(collate([sample])))
    logits = logits[:, 0, :ds.tokenizer.vocab_size]
    preds = np.nonzero(row.loss_mask)[0]
    # the stream index each predictor's target has, from its metadata (any physical row order):
    # text token t of chunk c predicts c L + t + 1; the last visual token of V_c (in the
    # controls: the last text token of chunk c) predicts (c + 1) L
    offset = row.position[preds] - (row.chunk[preds] * m if context == "vist2" else
                                    (0 if context == "window" else row.chunk[preds] * L))
    text_index = row.chunk[preds] * L + offset + 1
    target = np.where(row.kind[preds] == VISUAL, (row.chunk[preds] + 1) * L, text_index)
    assert sorted(target) == list(range(1, len(stream))) and np.array_equal(row.target[preds], target)
    assert [stream[t] for t in target] == list(row.labels[preds])
    return {int(t): logits[p] for t, p in zip(target, preds)}


def engine_logits(engine, streams_, prompt_lens, L):
    """Prefill each row, then feed the true next tokens -> per row {target index: logits}."""
    engine.reset()
    got = [dict() for _ in streams_]
    for b, (s, P) in enumerate(zip(streams_, prompt_lens)):
        logits = engine.prefill_logits(b, s[:P])
        if engine.mode == "vist2":
            full = P // L
            targets = [c * L for c in range(1, full + 1)] + list(range(full * L + 1, P + 1))
        else:
            targets = list(range(1, P + 1))
        assert len(targets) == len(logits)
        got[b].update(zip(targets, logits))
    pos = list(prompt_lens)
    while True:
        active = torch.tensor([pos[b] < len(s) - 1 for b, s in enumerate(streams_)])
        if not active.any():
            return got
        tokens = torch.tensor([s[min(pos[b], len(s) - 1)] for b, s in enumerate(streams_)])
        logits = engine.step(tokens, active)
        for b in range(len(streams_)):
            if active[b]:
                got[b][pos[b] + 1] = logits[b]
                pos[b] += 1




def causal_text_batch(ids, image_hw):
    """A row of text only, one chunk, positions 0..n-1: the VIST2 mask reduces to causal, so
    the model is a plain causal LM on it."""
    from megatron_vist2.models import TEXT, TokenLayout, Vist2Batch
    n = len(ids)
    zeros = torch.zeros(1, n, dtype=torch.long)
    layout = TokenLayout(doc=zeros, chunk=zeros, kind=torch.full((1, n), TEXT),
                         readback=torch.zeros(1, n, dtype=torch.bool), position=torch.arange(n)[None])
    return Vist2Batch(tokens=torch.tensor([ids]), layout=layout,
                      images=torch.zeros(0, *image_hw, dtype=torch.uint8), labels=zeros,
                      loss_mask=torch.zeros(1, n))
