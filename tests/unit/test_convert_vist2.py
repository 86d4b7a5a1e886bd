"""The whole VIST2 model exported for transformers (trust_remote_code): the directory alone gives
our logits on interleaved training rows (read-back and history chunks) (fp32, no network).
Its generate is tested against the engine in test_hf_generate_vist2.py."""
import torch
from transformers import AutoModelForCausalLM

from megatron_vist2.convert.vist2 import export_vist2
from megatron_vist2.data.dataset import collate
from tests.conftest import tiny_model


def test_exported_vist2_matches_our_model(dist_env, tiny_data, tmp_path):
    cfg, tok, ds, model = tiny_model(tiny_data, "model.init_std=0.1", "data.readback_fraction=0.5",
                                     "model.llm.tie_embeddings=false")
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, cfg.data.tokenizer, str(tmp_path / "vist2"), shard_bytes=1 << 20)
    assert {"modeling_vist2.py", "generation_vist2.py", "vist2_renderer.py", "vist2_kv_cache.py", "tokenizer.model", "DejaVuSansMono.ttf"} <= \
        {f.name for f in out.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()

    batch = collate([ds[i] for i in range(3)])
    lay = batch.layout
    assert bool(lay.readback.any()) and bool((~lay.readback & (lay.kind == 1)).any())   # both kinds
    V = cfg.model.llm.vocab_size
    with torch.no_grad():
        ours = model(batch)[..., :V].transpose(0, 1)                     # [batch, seq, V]
        theirs = hf(batch.tokens, images=batch.images, kind=lay.kind, position_ids=lay.position,
                    doc=lay.doc, chunk=lay.chunk, readback=lay.readback).logits
    real = lay.kind >= 0
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-4

