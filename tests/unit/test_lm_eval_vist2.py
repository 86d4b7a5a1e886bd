"""lm-evaluation-harness (lm_eval's HFLM, trust_remote_code, offline) on the exported VIST2
directory, with the repository's local tasks (lm_eval_tasks: last-word prediction and
perplexity on held-out text), against the project's own evaluation of the same documents: our
model's teacher-forced training forward (data/packing.py's layout in history mode, the renderer,
metrics/loss.py's per-token cross-entropy). Tolerance: 1e-3 absolute on each summed
log-likelihood (fp32; the two differ in kernel order only), the greedy flags equal, and the
aggregate metrics recomputed from our log-likelihoods with lm-eval's formulas to 1e-4 relative."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

TASKS = REPO / "lm_eval_tasks"
TOKENIZER = REPO / ".cache" / "tokenizers" / "smollm2"     # test_real_tokenizers.real_tokenizer_dir
MAX_LENGTH = 2048                                          # every passage fits one window


@pytest.fixture(scope="module")
def setup(dist_env, tiny_data, tmp_path_factory):
    pytest.importorskip("lm_eval")
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.convert.vist2 import export_vist2
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.models import Vist2Model
    from tests.conftest import tiny_overrides
    from tests.unit.test_real_tokenizers import real_tokenizer_dir
    real_tokenizer_dir("smollm2")
    tok = load_tokenizer(str(TOKENIZER))
    cfg = validate(load_config("tiny-cpu", tiny_overrides(
        tiny_data, "model.init_std=0.1", f"model.llm.vocab_size={tok.vocab_size}",
        f"data.tokenizer={TOKENIZER}", "model.llm.tie_embeddings=false",
        # SmolLM2's 32-token chunks reach ~270 characters: below tiny-cpu's legible 6 pt in 64 x 128
        # (the renderer warns); what is compared here is the two evaluations, not legibility
        "model.render.min_font_size=4")))
    torch.manual_seed(0)
    model = Vist2Model(cfg).eval()
    state = {n: p.detach() for n, p in model.named_parameters()}
    out = export_vist2(state.__getitem__, cfg, str(TOKENIZER), str(tmp_path_factory.mktemp("lmeval") / "vist2"),
                       shard_bytes=64 << 20)
    return cfg, tok, model, out


def our_log_probs(setup, ids):
    """The project's evaluation of one document: -> (log p(ids[j] | ids[:j]) for j >= 1, whether
    each is the greedy choice), from the training forward and the training loss."""
    from megatron_vist2.data.dataset import collate
    from megatron_vist2.data.packing import PER_TOKEN, Segment, assemble_row
    from megatron_vist2.data.renderer import Renderer
    from megatron_vist2.metrics.loss import masked_token_losses
    cfg, tok, model, _ = setup
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    seg = Segment(0, 0, len(ids), (False,) * -(-len(ids) // L))
    row = assemble_row([seg], [np.asarray(ids)], L, m, seg.row_tokens(L, m), order="interleaved")
    renderer = Renderer.from_model_config(cfg.model)
    sample = {k: getattr(row, k) for k in PER_TOKEN}
    sample["images"] = np.stack([renderer.render_chunk(c, tok.decode) for c in row.image_chunks]) \
        if row.image_chunks else np.zeros((0, renderer.height, renderer.width), np.uint8)
    batch = collate([sample])
    with torch.no_grad():
        logits = model(batch)                                    # [seq, 1, vocab]
    assert logits.shape[-1] == tok.vocab_size                    # no padded rows in this vocabulary
    targets = batch.loss_mask[0] > 0                             # interleaved: in document order
    lp = -masked_token_losses(logits, batch)[:, 0][targets]
    greedy = logits[:, 0].argmax(-1)[targets] == batch.labels[0][targets]
    assert len(lp) == len(ids) - 1
    return lp.double(), greedy


def run_lm_eval(setup, task, limit):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    lm = HFLM(pretrained=str(setup[3]), trust_remote_code=True, dtype="float32", device="cpu",
              batch_size=4, max_length=MAX_LENGTH)
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(TASKS)),
                          limit=limit, log_samples=True, bootstrap_iters=0)
    return lm, res["results"][task], res["samples"][task]


@pytest.mark.slow                          # over ~5 s in-process: lm-eval on an exported model
def test_last_word_task_equals_our_evaluation(setup, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok, L = setup[1], setup[0].model.chunk.text_tokens
    _, metrics, samples = run_lm_eval(setup, "vist2_lastword", limit=8)
    assert len(samples) == 8
    lls = []
    for s in samples:
        ll, is_greedy = s["filtered_resps"][0]
        ids = tok.encode(s["doc"]["context"] + s["doc"]["target"])
        n_ctx = len(tok.encode(s["doc"]["context"]))
        lp, greedy = our_log_probs(setup, ids)
        ours = float(lp[n_ctx - 1:].sum())
        assert abs(float(ll) - ours) < 1e-3, (ll, ours)
        assert bool(is_greedy) == bool(greedy[n_ctx - 1:].all())
        lls.append(ours)
    assert len(ids) > 3 * L                                       # several rendered chunks of context
    assert metrics["perplexity,none"] == pytest.approx(math.exp(-np.mean(lls)), rel=1e-4)
    

@pytest.mark.slow                          # over ~5 s in-process: lm-eval on an exported model
def test_perplexity_task_equals_our_evaluation(setup, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = setup[1]
    lm, metrics, samples = run_lm_eval(setup, "vist2_perplexity", limit=2)
    total, words, nbytes = 0.0, 0, 0
    for s in samples:
        text = s["doc"]["text"]
        ids = tok.encode(text)
        assert len(ids) + 1 <= MAX_LENGTH                         # one rolling window: the whole passage
        lp, _ = our_log_probs(setup, [lm.prefix_token_id] + ids)  # the harness's first context token
        ours = float(lp.sum())
        assert abs(float(s["filtered_resps"][0]) - ours) < 1e-3
        total, words, nbytes = total + ours, words + len(re.split(r"\s+", text)), nbytes + len(text.encode())
    assert metrics["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert metrics["bits_per_byte,none"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-4)


def test_plain_forward_lays_out_padded_rows_like_single_rows(setup):
    """Left and right padding give each row's own logits; a token beyond the positions is refused."""
    from transformers import AutoModelForCausalLM
    cfg, tok, _, out = setup
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    L = cfg.model.chunk.text_tokens
    ids = tok.encode(Path(TASKS / "vist2_perplexity.jsonl").read_text()[:2000])
    a, b = ids[:2 * L + 5], ids[40:40 + L]
    with torch.no_grad():
        alone = [hf(torch.tensor([r])).logits[0] for r in (a, b)]
        for side in ("left", "right"):
            pad = [0] * (len(a) - len(b))
            row_b = pad + b if side == "left" else b + pad
            mask_b = [0] * len(pad) + [1] * len(b) if side == "left" else [1] * len(b) + [0] * len(pad)
            both = hf(torch.tensor([a, row_b]), attention_mask=torch.tensor([[1] * len(a), mask_b])).logits
            torch.testing.assert_close(both[0], alone[0], rtol=0, atol=1e-4)
            got = both[1, len(pad):] if side == "left" else both[1, :len(b)]
            torch.testing.assert_close(got, alone[1], rtol=0, atol=1e-4)
    limit = hf.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        hf(torch.zeros(1, limit * L // cfg.model.visual_tokens_per_chunk + L, dtype=torch.long))
