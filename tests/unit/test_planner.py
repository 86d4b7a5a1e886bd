"""The layout planner (cost/planner.py): its per-rank parameter counts equal the real stage
models tools/dry_run.py builds on the meta device, and its ranking only returns layouts that
validate, fit, and come fastest first."""
import re
import subprocess
import sys

import pytest

from megatron_vist2.config import load_config, validate
from megatron_vist2.cost.planner import Cluster, memory, plan_layouts, stage_sizes
from tests.conftest import REPO, subprocess_env

LAYOUTS = [   # (preset, world, overrides)
    ("8b", 8, ["parallel.tensor_parallel=4", "parallel.pipeline_parallel=2", "parallel.global_batch_size=8"]),
    ("8b", 32, ["parallel.tensor_parallel=8", "parallel.pipeline_parallel=4", "parallel.global_batch_size=32",
                "model.llm.tie_embeddings=false"]),
    ("0.6b", 4, ["parallel.tensor_parallel=2", "parallel.pipeline_parallel=2", "parallel.global_batch_size=4",
                 "parallel.pipeline_layers=[10,18]"]),
    ("tiny-cpu", 2, ["parallel.tensor_parallel=2", "model.llm.num_kv_heads=1"]),      # replicated K/V
]


@pytest.mark.slow                          # tools/dry_run.py in a subprocess
@pytest.mark.parametrize("preset,world,overrides", LAYOUTS, ids=[f"{p}-{w}" for p, w, _ in LAYOUTS])
def test_parameters_per_rank_equal_the_built_stage_models(preset, world, overrides):
    proc = subprocess.run([sys.executable, "tools/dry_run.py", "--preset", preset, "--world", str(world),
                           "--gpu-memory-gib", "100000", *overrides], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = [int(m.group(1).replace(",", "")) for m in
             re.finditer(r"^\s+\d+\s+\d+\s+([\d,]+)\s", proc.stdout, re.M)]
    cfg = validate(load_config(preset, overrides), world)
    assert [s["params"] for s in stage_sizes(cfg)] == built


def test_frozen_parts_are_not_trainable():
    cfg = validate(load_config("8b", ["train.freeze=[front.vision, layers.0]"]), 1)
    (stage,) = stage_sizes(cfg)
    free = stage_sizes(validate(load_config("8b"), 1))[0]
    layer = (free["params"] - stage_sizes(validate(load_config("8b", ["model.llm.num_layers=35"]), 1))[0]["params"])
    assert stage["params"] == free["params"]
    assert stage["trainable"] == free["trainable"] - stage["vision"] - layer


def test_ranking_returns_fitting_valid_layouts_fastest_first():
    cluster = Cluster(world=64)
    plans = plan_layouts(load_config("8b"), cluster, top=50)
    assert len(plans) >= 10
    speeds = [p.tokens_per_s for p in plans]
    assert speeds == sorted(speeds, reverse=True)
    for p in plans[:5]:
        cfg = validate(load_config("8b", p.overrides), cluster.world)
        worst = max(sum(memory(cfg, cluster.world, r).values()) for r in stage_sizes(cfg)) / 2 ** 30
        assert worst == pytest.approx(p.memory_gib) and worst <= 80 * 0.9
    assert plan_layouts(load_config("8b"), Cluster(world=8, gpu_memory_gib=16)) == []


def _saved_bytes(data, *overrides) -> int:
    """Bytes of the tensors autograd keeps for one forward of the model (weights excluded)."""
    import torch
    from megatron_vist2.data.dataset import collate
    from tests.conftest import tiny_model
    cfg, tok, ds, model = tiny_model(data, *overrides)
    model.train()
    from megatron_vist2.parallel.activation_checkpoint import apply_activation_checkpointing
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    batch = collate([ds[i] for i in range(4)])
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(batch)
    return sum(v for k, v in seen.items() if k not in weights), cfg


@pytest.mark.parametrize("mode", ["none", "selective"])
def test_activation_formula_equals_what_autograd_keeps(dist_env, tiny_data, mode):
    """Per decoder layer: the tensors saved for backward by a 4-layer minus a 2-layer model
    (GQA with 2 KV heads, QK-norm, RoPE, SwiGLU) equal the planner's count within 3 %."""
    from megatron_vist2.cost.planner import activation_elements_per_token
    common = ["model.llm.hidden_size=256", "model.llm.ffn_hidden_size=768", "model.llm.head_dim=64",
              f"train.activation_checkpointing={mode}"]
    big, cfg = _saved_bytes(tiny_data, *common, "model.llm.num_layers=4")
    small, _ = _saved_bytes(tiny_data, *common, "model.llm.num_layers=2")
    per_layer = (big - small) / 2
    want = activation_elements_per_token(cfg) * cfg.data.seq_length * 4 * 4     # 4 rows, fp32
    assert per_layer == pytest.approx(want, rel=0.03)
