"""Diagnostic (docs/fidelity.md): can the tiny-cpu model read its images at all? Trained in
read-back mode on 8 held-out chunks alone (plain AdamW, one process), it must read every chunk
back exactly, first token included, which is predicted from the image alone. Needs the main
job's data (examples/tiny_cpu/prepare_data.sh). Prints step, loss, the number of distinct first
tokens read, the exact chunks and the time.

    python examples/tiny_cpu/readback_overfit.py
"""
import time, torch
from megatron_vist2.config import load_config, validate
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.renderer import Renderer, chunk_text
from megatron_vist2.metrics.readback import held_out_chunks, readback_batch, greedy_readback
from megatron_vist2.models import Vist2Model
from megatron_vist2.metrics.loss import token_losses
from megatron_vist2.parallel.distributed import init_distributed
init_distributed(1, 1)
torch.set_num_threads(1)
cfg = validate(load_config("tiny-cpu", ["train.dtype=fp32"]), 1)
tok = load_tokenizer(cfg.data.tokenizer)
chunks = held_out_chunks(open_indexed(cfg.data.valid_prefix, tok), 32, 8)
r = Renderer.from_model_config(cfg.model)
b = readback_batch(chunks, r, tok.decode, 32, 8)
torch.manual_seed(0)
model = Vist2Model(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
t = time.time()
for step in range(301):
    total, count = token_losses(model(b), b)
    loss = total / count
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        # how much does the first read-back token depend on the image? (logits at m-1 only see V_i)
        with torch.no_grad():
            out = greedy_readback(model.eval(), b, 8, 32, tok.vocab_size); model.train()
        firsts = out[:, 0].tolist()
        print(step, round(float(loss), 3), "distinct first tokens", len(set(firsts)), "of", len(chunks),  # noqa
              "exact", sum(chunk_text(tok.decode(o)) == chunk_text(tok.decode(c.tolist())) for o, c in zip(out.tolist(), chunks)),
              f"{time.time() - t:.0f}s", flush=True)
