"""The GPU path, checked on the CPU (docs/trust.md, "The GPU path"): what a GPU run does
differently is reached here by patching ``torch.cuda``'s queries, by the ``meta`` device (no
data: a host sync or a tensor created on the wrong device fails), or by reading what DeepSpeed
built. Each test fails on the code before the fix it names."""
import os
import subprocess
import sys

import pytest
import torch

from megatron_vist2.config import load_config
from megatron_vist2.parallel import distributed
from tests.conftest import REPO, subprocess_env, tiny_model, tiny_overrides


# ------------------------------------------------------------------ finding 1: imports
@pytest.mark.slow
def test_training_and_generation_import_without_rapidfuzz_and_the_packages_the_gpu_lacks():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_import_check.py", "--as-gpu-image",
                           "--without", "rapidfuzz"], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imports ok" in proc.stdout and "rapidfuzz" in proc.stdout


# ------------------------------------------------------------------ finding 11: local rank -> GPU
def test_local_rank_maps_to_a_visible_device(monkeypatch):
    assert [distributed.cuda_device_index(r, 8) for r in range(8)] == list(range(8))   # all GPUs shown
    assert [distributed.cuda_device_index(r, 1) for r in range(8)] == [0] * 8          # one per task
    assert [distributed.cuda_device_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    from megatron_vist2 import train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for visible, expected in ((1, 0), (8, 5)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda v=visible: v)
        monkeypatch.setenv("LOCAL_RANK", "5")
        assert train._device() == torch.device("cuda", expected)     # the preflight's device


# ------------------------------------------------------------------ finding 16: peak table
def test_peak_table_tells_pcie_and_nvl_from_sxm():
    from megatron_vist2.training.logger import peak_tflops_of
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0,
             "NVIDIA H200": 989.0, "NVIDIA H200 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0,
             "NVIDIA B200": 2250.0, "Tesla T4": None}
    assert {n: peak_tflops_of(n) for n in names} == names


# ------------------------------------------------------------------ finding 8: NCCL timing
def test_a_timed_collective_synchronises_the_gpu_on_entry_and_exit(monkeypatch):
    from megatron_vist2.training import watchdog
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append(("sync", watchdog.current_collective())))
    watchdog.take_waited()
    with watchdog.collective("flag all_reduce", timed=True):
        events.append("collective queued")
    with watchdog.collective("pipeline step"):         # untimed: no sync of its own
        events.append("step")
    assert events == [("sync", watchdog.IDLE), "collective queued", ("sync", "flag all_reduce"), "step"]


# ------------------------------------------------------------------ finding 17: environment
def test_the_entry_point_sets_the_gpu_environment_before_cuda_starts(monkeypatch):
    from megatron_vist2 import train
    names = ("CUDA_DEVICE_MAX_CONNECTIONS", "PYTORCH_CUDA_ALLOC_CONF", "TORCH_FR_BUFFER_SIZE",
             "TORCH_NCCL_DUMP_ON_TIMEOUT")

    class Stop(Exception):
        pass

    def preflight(cfg):
        raise Stop(dict((n, os.environ.get(n)) for n in names))
    monkeypatch.setattr(train, "preflight", preflight)
    for n in names:
        monkeypatch.delenv(n, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")           # the user's wins
    with pytest.raises(Stop) as tp2:
        train.main(["--preset", "tiny-cpu", "parallel.tensor_parallel=2"])
    assert tp2.value.args[0] == {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "PYTORCH_CUDA_ALLOC_CONF": "backend:native",
                                 "TORCH_FR_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS")
    with pytest.raises(Stop) as tp1:
        train.main(["--preset", "tiny-cpu"])
    assert tp1.value.args[0]["CUDA_DEVICE_MAX_CONNECTIONS"] is None        # TP1: kernels may overlap


# ------------------------------------------------------------------ finding 10: fp32 accumulation
def test_deepspeed_accumulates_bf16_gradients_in_fp32_under_zero(dist_env, tiny_data):
    from megatron_vist2.training.deepspeed_config import deepspeed_config
    from megatron_vist2.training.trainer import build_model, make_engine
    for dtype, zero, accumulate in (("bf16", 1, "fp32"), ("bf16", 2, "fp32"), ("bf16", 3, "fp32"),
                                    ("bf16", 0, "bf16"), ("fp32", 0, "fp32"), ("fp32", 1, "fp32")):
        cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, f"train.dtype={dtype}", f"parallel.zero_stage={zero}"))
        assert deepspeed_config(cfg, 1)["data_types"] == {"grad_accum_dtype": accumulate}
    # and DeepSpeed builds what the config asks: an fp32 gradient buffer for bf16 weights
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, "train.dtype=bf16", "parallel.zero_stage=1"))
    engine = make_engine(cfg, dist_env, build_model(cfg, dist_env))
    try:
        assert engine.get_data_types() == (torch.bfloat16, torch.float32)
        assert type(engine.optimizer).__name__ == "BF16_Optimizer"
        assert {t.dtype for t in engine.optimizer.fp32_groups_gradients_flat} == {torch.float32}
    finally:
        engine.destroy()


# ------------------------------------------------------------------ finding 13 + device placement
def test_training_forward_loss_and_backward_run_on_the_meta_device(dist_env, tiny_data, monkeypatch):
    """On ``meta`` a host sync (``int(t)``, ``.item()``, boolean-mask indexing) raises, and so
    does a tensor made on the CPU and mixed with the model's: the training model's forward, the
    VIST2 loss with its split and the backward have neither. (megatron's vocab-parallel
    cross-entropy all-reduces over the 1-rank TP group: an identity, which gloo cannot do on meta
    tensors.)"""
    from megatron_vist2.data.dataset import collate
    from megatron_vist2.metrics.loss import training_loss
    _, _, ds, model = tiny_model(tiny_data, "data.readback_fraction=0.5")
    batch = collate([ds[0], ds[1]]).to("meta")
    model = model.to("meta").train()
    real_all_reduce = torch.distributed.all_reduce
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda t, *a, **k: None if t.device.type == "meta" else real_all_reduce(t, *a, **k))
    loss, split = training_loss(model(batch), batch)
    loss.backward()
    assert loss.device.type == split.device.type == "meta" and split.shape == (4,)
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
