"""Shared by the parity test modules: launch the worker once per module, the single-process
reference, and the comparison.

The reference is plain PyTorch: no DeepSpeed, no process groups beyond one rank, the global batch
(8 rows) as 4 micro-batches of 2 with gradient accumulation (the order in which a one-rank run
draws dropout masks), loss = mean cross-entropy over all the batch's text targets, torch AdamW
with its own parameter groups."""
import numpy as np
import torch
import torch.nn.functional as F

from megatron_vist2.config import load_config, validate
from megatron_vist2.data.dataset import PackedVist2Dataset, collate
from megatron_vist2.data.ocr_targets import OcrChunkDataset, collate_ocr
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.models import Vist2Model
from megatron_vist2.models.attention import dense_mask
from megatron_vist2.metrics.loss import token_losses
from tests.distributed import pool
from tests.distributed.scenario import GUIDE_WEIGHT, OCR_WEIGHT, STEPS, Layout, scenario_overrides


def launch_worker(world: int, tiny_data, out, script: str = "tests/distributed/parity_worker.py") -> dict:
    """``script`` on ``world`` ranks (args: the tiny data's root, ``out``), as one job of the
    session's rank pool (tests/distributed/pool.py); -> what it saved, and its output."""
    proc = pool.run(world, "script", [script, str(tiny_data.root), str(out)], timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return torch.load(out, weights_only=True), proc.stdout + proc.stderr


def reference_run(tiny_data, tied: bool = True, kv_heads: int = 2, hidden_dropout: float = 0.0,
                  context: str = "vist2", ocr: str = ""):
    """``ocr``: "aux" adds OCR_WEIGHT x the OCR head's mean cross-entropy over the global batch's
    cells to the loss, and GUIDE_WEIGHT x guided attention's mean (brute force, ``_guided_attention``); "front" trains the front and the head alone on rendered chunks (the
    reported loss is then the OCR mean)."""
    layout = Layout(1, tied=tied, kv_heads=kv_heads, hidden_dropout=hidden_dropout, context=context, ocr=ocr)
    cfg = validate(load_config("tiny-cpu", scenario_overrides(tiny_data, layout)))
    tok = load_tokenizer(cfg.data.tokenizer)
    if ocr == "front":
        return _front_reference(cfg, tok)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed,
                            ocr_targets=ocr == "aux")
    model = Vist2Model(cfg)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    torch.manual_seed(cfg.train.seed)          # the dropout stream every rank of stage 0 starts from
    G, micro = cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size
    losses = []
    for step in range(STEPS):
        batches = [collate([ds[i] for i in range(start, start + micro)])
                   for start in range(step * G, (step + 1) * G, micro)]
        count = sum(b.loss_mask.sum() for b in batches)
        cells = sum(b.ocr_targets.numel() for b in batches) if ocr else None
        guided = cfg.train.cursor_attention_layers
        terms = sum(int((b.cursor_key >= 0).sum()) for b in batches) * cfg.model.llm.num_heads * guided if ocr else 0
        opt.zero_grad()
        loss = 0.0
        for batch in batches:
            inputs = {}
            hooks = [model.layers[str(i)].register_forward_pre_hook(
                lambda _, args, i=i: inputs.__setitem__(i, args[0])) for i in range(guided if ocr else 0)]
            total, _ = token_losses(model(batch), batch)
            for hook in hooks:
                hook.remove()
            model.take_cursor_attention_loss()      # (the model's own: replaced by the brute force below)
            extra = 0.0
            if ocr:                            # the head's loss on this batch's images, by hand
                vis = model.front.aligner(model.front.vision(batch.images))
                extra = F.cross_entropy(model.front.ocr_head(vis).flatten(0, 1), batch.ocr_targets.flatten(),
                                        reduction="sum") * OCR_WEIGHT / cells
                extra = extra + _guided_attention(model, batch, inputs) * GUIDE_WEIGHT / terms
            (total / count + extra).backward()
            loss += (total / count).item()
        opt.step()
        losses.append(loss)
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def _guided_attention(model, batch, inputs):
    """Guided attention by brute force: each guided layer's attention probabilities from its
    input (dense softmax over the dense VIST2 mask, every query head with its KV head), -log of
    the probability on each guided position's key, summed."""
    mask = dense_mask(batch.layout)[:, 0]
    rope = model.rotary(batch.layout.position)
    total = 0.0
    for i, hidden in inputs.items():
        layer = model.layers[str(i)]
        q, k, _ = layer.attention.project(layer.input_norm(hidden), rope)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~mask[:, None], float("-inf"))
        logp = torch.log_softmax(scores, -1)                          # [batch, heads, seq, seq]
        b, s = (batch.cursor_key >= 0).nonzero(as_tuple=True)
        total = total - logp[b, :, s, batch.cursor_key[b, s]].sum()
    return total


def _front_reference(cfg, tok):
    """Stage 0's front-only objective: ViT -> aligner -> OCR head on rendered chunks, mean
    cross-entropy over the global batch's cells; only those parts train."""
    ds = OcrChunkDataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
    model = Vist2Model(cfg)
    params = [p for n, p in model.named_parameters() if n.startswith(("front.vision", "front.aligner", "front.ocr_head"))]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    G, micro = cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size
    losses = []
    for step in range(STEPS):
        batches = [collate_ocr([ds[i] for i in range(start, start + micro)])
                   for start in range(step * G, (step + 1) * G, micro)]
        cells = sum(b.targets.numel() for b in batches)
        opt.zero_grad()
        loss = 0.0
        for b in batches:
            total = F.cross_entropy(model.front.ocr_head(model.front.aligner(model.front.vision(b.images))).flatten(0, 1),
                                    b.targets.flatten(), reduction="sum") / cells
            total.backward()
            loss += total.item()
        opt.step()
        losses.append(loss)
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_matches_reference(got: dict, reference, scenario: str) -> None:
    ref_losses, ref_params = reference
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=0, atol=1e-5)
    assert got["params"].keys() == ref_params.keys()
    worst = max((got["params"][n] - p).abs().max().item() for n, p in ref_params.items())
    assert worst <= 1e-5, f"{scenario}: max parameter difference {worst:.2e}"
