"""Resuming in another layout: a checkpoint written by one TP/PP/DP layout and ZeRO stage is
resumed by another, through the real entry points. Each source layout trains 4 steps and saves at
step 2; the other layout resumes from that step-2 checkpoint. Its losses at steps 3 and 4 must
equal the source's (1e-5): step 3 checks the weights, step 4 the optimizer state (Adam moments,
step count, learning rate) carried through the conversion."""
import pytest

from tests.distributed.runs import losses, metrics, tool, train

LAYOUTS = {   # name: (overrides, ranks)
    "single": ([], 1),
    "tp2": (["parallel.tensor_parallel=2"], 2),
    "dp2-zero3": (["parallel.zero_stage=3"], 2),
    "pp2": (["parallel.pipeline_parallel=2", "parallel.micro_batch_size=4"], 2),
    "single-zero0": (["parallel.zero_stage=0"], 1),
    # one KV head: TP2 replicates K/V on both ranks; ZeRO-3 partitions them again
    "kv1-tp2-zero3": (["model.llm.num_kv_heads=1", "parallel.tensor_parallel=2", "parallel.zero_stage=3"], 2),
    "kv1-single-zero0": (["model.llm.num_kv_heads=1", "parallel.zero_stage=0"], 1),
    # frozen vision encoder: ZeRO-3 keeps frozen parameters apart from the optimizer's groups
    "frozen-dp2-zero3": (["train.freeze=[front.vision]", "parallel.zero_stage=3"], 2),
    "frozen-single": (["train.freeze=[front.vision]"], 1),
    # bf16: DeepSpeed's fp32 master copies are what the reader takes and the writer fills
    "tp2-bf16": (["parallel.tensor_parallel=2", "train.dtype=bf16"], 2),
    "single-bf16": (["train.dtype=bf16"], 1),
}

PAIRS = [("tp2", "single"), ("single", "tp2"), ("dp2-zero3", "single"), ("single", "dp2-zero3"),
         ("pp2", "single"), ("single", "pp2"), ("kv1-tp2-zero3", "kv1-single-zero0"),
         ("frozen-dp2-zero3", "frozen-single"), ("tp2-bf16", "single-bf16")]


@pytest.fixture(scope="module")
def sources(tiny_data, tmp_path_factory):
    """name -> output directory of a 4-step run of that layout (saved at steps 2 and 4)."""
    root, done = tmp_path_factory.mktemp("reshard_sources"), {}

    def get(name):
        if name not in done:
            overrides, ranks = LAYOUTS[name]
            train(tiny_data, root / name, "train.steps=4", "checkpoint.save_interval=2", *overrides,
                  ranks=ranks)
            done[name] = root / name
        return done[name]
    return get


@pytest.mark.parametrize("source,target", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_resume_in_another_layout_continues_the_run(sources, tiny_data, tmp_path, source, target):
    src = sources(source)
    overrides, ranks = LAYOUTS[target]
    proc = train(tiny_data, tmp_path, "train.steps=4", *overrides,
                 f"checkpoint.load_dir={src / 'ckpt' / 'step_0000002'}", ranks=ranks)
    assert "resharded" in proc.stdout
    want, got = losses(src), losses(tmp_path)
    assert sorted(got) == [3, 4]
    tolerance = 2e-4 if "bf16" in target else 1e-5      # bf16 rounds differently per layout
    for step in (3, 4):
        assert abs(got[step] - want[step]) <= tolerance, (step, got, want)
    consumed = [e["train/consumed_samples"] for e in metrics(tmp_path) if "train/consumed_samples" in e]
    assert consumed == [48, 64]                # continued from the saved consumed_samples (32)


def test_consolidated_checkpoint_resumes_in_another_layout(sources, tiny_data, tmp_path):
    """tools/reshard_checkpoint.py turns the TP2 shards into full tensors; a PP2 run resumes
    from them and continues the TP2 run."""
    tool("tools/reshard_checkpoint.py", "--checkpoint", str(sources("tp2") / "ckpt" / "step_0000002"),
          "--out", str(tmp_path / "consolidated"), "--shard-gb", "0.004")      # several shards
    assert len(list((tmp_path / "consolidated" / "step_0000002").glob("*.safetensors"))) > 1
    overrides, ranks = LAYOUTS["pp2"]
    train(tiny_data, tmp_path / "run", "train.steps=4", *overrides,
          f"checkpoint.load_dir={tmp_path / 'consolidated'}", ranks=ranks)
    want, got = losses(sources("tp2")), losses(tmp_path / "run")
    assert all(abs(got[s] - want[s]) <= 1e-5 for s in (3, 4)), (got, want)


@pytest.mark.parametrize("source", ["tp2", "pp2", "dp2-zero3", "kv1-tp2-zero3"])
def test_export_from_any_layout_matches_transformers(dist_env, sources, source, tmp_path):
    """From a TP2 / PP2 / ZeRO-3 / TP2-with-one-KV-head checkpoint: the backbone loads as
    Qwen3ForCausalLM and gives our text-only logits; the whole model (--vist2, trust_remote_code)
    gives our logits on interleaved rows. "Ours" is our model built from the same checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM
    from megatron_vist2.data.dataset import build_dataset, collate
    from megatron_vist2.inference.load import load_for_inference
    from tests.inference_helpers import causal_text_batch
    ckpt = sources(source) / "ckpt"
    tool("tools/convert_checkpoint.py", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf"))
    tool("tools/convert_checkpoint.py", "--checkpoint", str(ckpt), "--out", str(tmp_path / "vist2"), "--vist2")
    model, tok, cfg = load_for_inference(str(ckpt))
    V = cfg.model.llm.vocab_size
    hf = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    ids = tok.encode("The state of the union is strong, and the people are its strength.")
    batch = causal_text_batch(ids, (cfg.model.chunk.image_height, cfg.model.chunk.image_width))
    with torch.no_grad():
        ours = model(batch)[:, 0, :V]
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4
    full = AutoModelForCausalLM.from_pretrained(str(tmp_path / "vist2"), trust_remote_code=True,
                                                local_files_only=True).eval()
    ds = build_dataset(cfg.data.valid_prefix, tok, cfg, 0, 2)
    rows = collate([ds[0], ds[1]])
    lay = rows.layout
    with torch.no_grad():
        ours = model(rows)[..., :V].transpose(0, 1)
        theirs = full(rows.tokens, images=rows.images, kind=lay.kind, position_ids=lay.position,
                      doc=lay.doc, chunk=lay.chunk, readback=lay.readback).logits
    real = lay.kind >= 0
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-4


def test_inspect_reports_layout_step_and_parameters(sources):
    import json
    from megatron_vist2.config import config_from_dict, validate
    from megatron_vist2.config import analytic_parameter_counts
    out = json.loads(tool("tools/inspect_checkpoint.py", str(sources("pp2") / "ckpt"), "--json"))
    assert out["layout"]["pipeline_parallel"] == 2 and out["step"] == 4 and out["consumed_samples"] == 64
    import yaml
    saved = yaml.safe_load((sources("pp2") / "ckpt" / "step_0000004" / "config.yaml").read_text())
    cfg = validate(config_from_dict(saved))
    assert out["parameters"] == analytic_parameter_counts(cfg)["total"]
    assert out["tensors"]["layers.3.mlp.down_proj.weight"] == [cfg.model.llm.hidden_size, cfg.model.llm.ffn_hidden_size]


def test_zero0_reports_the_same_grad_norm_as_zero1(sources):
    """Without ZeRO (fp32) DeepSpeed drops the clipping norm; the trainer keeps it: equal to the
    norm DeepSpeed's ZeRO-1 path reports for the same steps."""
    def norms(name):
        return [e["train/grad_norm"] for e in metrics(sources(name)) if "train/grad_norm" in e]
    zero0, zero1 = norms("single-zero0"), norms("single")
    assert len(zero0) == 4 and all(abs(a - b) <= 1e-4 * b for a, b in zip(zero0, zero1)), (zero0, zero1)


def test_bf16_without_zero_is_refused_not_loaded_wrongly(sources, tiny_data, tmp_path):
    """DeepSpeed's unfused bf16 optimizer (ZeRO-0) keeps fp32 copies the loader cannot fill: a
    resharded load into it is refused with the fix named."""
    proc = train(tiny_data, tmp_path, "train.steps=4", "train.dtype=bf16", "parallel.zero_stage=0",
                 f"checkpoint.load_dir={sources('tp2-bf16') / 'ckpt' / 'step_0000002'}", check=False)
    assert proc.returncode != 0
    assert "bf16 run without ZeRO is not supported" in proc.stdout + proc.stderr
