"""The checkpoint findings of the GPU audit (docs/trust.md, GPU section), tested on the CPU:

- finding 2: a checkpoint saved on GPUs records each storage's device ("cuda:1"); every reader
  maps it to the CPU, so export, evaluation and consolidation work on a machine without CUDA.
  The checkpoint here is a real DeepSpeed save whose pickles are rewritten with CUDA location
  tags (torch.serialization's public tagger registry), i.e. the bytes a GPU run writes.
- finding 13: the weight check before a save makes one host sync, whatever the parameter count.
- finding 14: asynchronous saves page-lock host buffers of exactly the state's size, reuse them
  from save to save, and unpin them at the end (not torch's pinned allocator, which rounds up to
  a power of two and never frees).
"""
import json

import pytest
import torch

from tests.bad_input.harness import invoke
from tests.conftest import tiny_overrides

_CUDA_TAG = {"device": None}


def _cuda_tagger(storage):
    return _CUDA_TAG["device"]


torch.serialization.register_package(-1, _cuda_tagger, lambda storage, location: None)


def _retag(step_dir, device: str) -> None:
    """Rewrite every pickle under ``step_dir`` as a run on ``device`` writes it (storages tagged
    with that device), then the manifest's sizes."""
    from megatron_vist2.checkpoint.format import safe_load, write_manifest
    for f in sorted(step_dir.rglob("*.pt")):
        obj = safe_load(str(f))
        _CUDA_TAG["device"] = device
        try:
            torch.save(obj, f)
        finally:
            _CUDA_TAG["device"] = None
    manifest = json.loads((step_dir / "complete.json").read_text())
    manifest.pop("files")
    write_manifest(step_dir, **manifest)


@pytest.fixture(scope="module")
def gpu_written(tiny_data, dist_env, tmp_path_factory):
    """A DeepSpeed checkpoint (ZeRO-1) of the tiny model as a GPU run saves it; -> (root, the
    weights it holds)."""
    from megatron_vist2.checkpoint.save import save_checkpoint
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.training.trainer import build_model, make_engine
    root = tmp_path_factory.mktemp("gpu_written") / "ckpt"
    cfg = validate(load_config("tiny-cpu", tiny_overrides(tiny_data, f"checkpoint.save_dir={root}",
                                                          "parallel.zero_stage=1")), 1)
    engine = make_engine(cfg, dist_env, build_model(cfg, dist_env))
    weights = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    save_checkpoint(engine, cfg, 1, 8, load_tokenizer(cfg.data.tokenizer).sha256, log=lambda *_: None)
    engine.destroy()
    _retag(root / "step_0000001", "cuda:1")
    return root, weights


@pytest.mark.slow      # the fixture trains a run in this process
def test_the_crafted_checkpoint_records_cuda_storages(gpu_written):
    """The reference for the tests below: loading the files as they are asks for CUDA."""
    root, _ = gpu_written
    shard = next((root / "step_0000001").glob("*model_states.pt"))
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(shard, weights_only=False)


@pytest.mark.slow      # the fixture trains a run in this process
def test_a_gpu_checkpoint_reads_on_a_machine_without_cuda(gpu_written):
    from megatron_vist2.checkpoint.sources import open_checkpoint
    root, weights = gpu_written
    source = open_checkpoint(str(root))
    for name, w in weights.items():
        t = source.tensor(name)
        assert t.device.type == "cpu" and torch.equal(t, w.float()), name


@pytest.mark.slow      # the fixture trains a run in this process
def test_export_consolidate_and_evaluate_a_gpu_checkpoint_without_cuda(gpu_written, tiny_data, tmp_path, capsys):
    from tests.conftest import safetensors_tensors
    root, weights = gpu_written
    assert invoke("tools/convert_checkpoint.py", ["--checkpoint", str(root), "--out", str(tmp_path / "hf")]) == 0
    exported = safetensors_tensors(tmp_path / "hf")
    assert torch.equal(exported["model.embed_tokens.weight"][:weights["front.embedding.weight"].shape[0]],
                       weights["front.embedding.weight"])
    assert invoke("tools/reshard_checkpoint.py", ["--checkpoint", str(root), "--out", str(tmp_path / "c")]) == 0
    assert invoke("tools/evaluate.py", ["--checkpoint", str(root), "--out", str(tmp_path / "eval"),
                                        "--batches", "1", "--micro-batch", "2", "--ocr-chunks", "0",
                                        "--long-docs", "0", "--no-tensorboard",
                                        "--valid-prefix", tiny_data.valid]) == 0, capsys.readouterr().err[-3000:]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())


def test_the_weight_check_syncs_once_per_save(dist_env):
    """check_weights stacks the per-parameter statistics on the device and reads them once (it
    used to read one flag per parameter). Host reads are counted with a torch function mode."""
    from torch.overrides import TorchFunctionMode
    from megatron_vist2.checkpoint.divergence import check_weights
    reads = {"__bool__", "item", "tolist", "__float__", "__int__", "cpu", "numpy"}

    class CountReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.count += getattr(func, "__name__", "") in reads
            return func(*args, **(kwargs or {}))

    module = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(25)])      # 50 parameters
    with CountReads() as mode:
        check_weights(module, 1, "unused", dist_env.device)
    assert mode.count == 1


def test_async_host_buffers_are_exact_reused_and_unpinned():
    """The page-locking calls are recorded (no CUDA here): one per buffer, of its exact size
    (1000 bytes, not the 1024 torch's pinned allocator would take), none for a buffer reused by
    the next save, each undone at the end."""
    from megatron_vist2.checkpoint.async_write import HostBuffers, _copy_tensor
    pinned, unpinned = [], []
    pool = HostBuffers(register=lambda ptr, n, flags: pinned.append((ptr, n)),
                       unregister=unpinned.append)
    first = pool.take(1000, cuda=True)
    second = pool.take(24, cuda=True)
    assert pinned == [(first.data_ptr(), 1000), (second.data_ptr(), 24)]
    pool.give_back([first, second])
    assert pool.take(1000, cuda=True).data_ptr() == first.data_ptr() and len(pinned) == 2
    assert pool.take(8, cuda=False) is not None and len(pinned) == 2            # a CPU state: not pinned
    pool.close()
    assert unpinned == [first.data_ptr(), second.data_ptr()] and pool.free == {}
    # a CPU snapshot through the pool copies into an unpinned buffer of the storage's size
    copy = _copy_tensor(torch.arange(5.0), {}, HostBuffers(register=lambda *a: pytest.fail("pinned")))
    assert copy.untyped_storage().nbytes() == 20


def test_pin_failure_says_what_to_do():
    from megatron_vist2.checkpoint.async_write import HostBuffers
    from megatron_vist2.errors import CheckpointError
    pool = HostBuffers(register=lambda ptr, n, flags: 2)          # cudaErrorMemoryAllocation
    with pytest.raises(CheckpointError, match="page-locking a 64-byte host buffer.*checkpoint.async_save=false"):
        pool.take(64, cuda=True)
