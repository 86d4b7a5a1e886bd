"""Worker for tests/distributed/test_health.py (one job of the 2-rank pool): runs the real
training loop (``trainer.train``) once per scenario with a fault injected through
MEGATRON_VIST2_FAULT; rank 0 saves what the test compares (full parameters, the torch optimizer's
step counts on every rank, the result, errors, checkpoint hashes, watchdog dumps)."""
import hashlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vist2.config import load_config, validate
from megatron_vist2.errors import CheckpointError
from megatron_vist2.parallel.distributed import init_distributed
from megatron_vist2.training import trainer
from tests.conftest import tiny_overrides
from tests.distributed.gather import full_parameters

G = 8


def overrides(data, out, zero=0, pp=1, steps=4, *extra):
    """Constant-free schedule: linear warm-up over 10 steps (lr_k = 1e-3 (k + 1) / 10), so a
    skipped step that advanced the schedule would show in the weights."""
    return tiny_overrides(data, f"parallel.zero_stage={zero}", f"parallel.pipeline_parallel={pp}",
                          "optim.grad_clip=0.0", "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.warmup_steps=10",
                          "optim.weight_decay=0.1", "optim.eps=1e-6", "parallel.micro_batch_size=2",
                          f"parallel.global_batch_size={G}", f"train.steps={steps}", "train.log_interval=1",
                          "train.eval_batches=1", "train.eval_interval=0", f"logging.dir={out}",
                          f"checkpoint.save_dir={out}/ckpt", "logging.tensorboard=false", *extra)


# name -> (layout, steps, fault, extra overrides)
SCENARIOS = {
    "nan-loss-rank1-zero1": (dict(zero=1), 4, "nan-loss:2:1", []),
    "nan-grad-rank0-zero3": (dict(zero=3), 4, "nan-grad:2:0", []),
    "nan-grad-rank0-pp2": (dict(pp=2), 4, "nan-grad:2:0", []),
    "stop-first": (dict(), 2, "", []),
    "stop-then": (dict(), 8, "nan-loss:3-:0", ["checkpoint.save_interval=2", "train.health.max_consecutive_skips=2"]),
    "rollback": (dict(), 6, "spike:4:*:100", ["checkpoint.save_interval=2", "train.health.spike_mode=rollback",
                                             "train.health.spike_window=3", "train.health.spike_zscore=50",
                                             "train.health.spike_skip_batches=2"]),
    "stall": (dict(), 3, "stall:3:1:8", ["train.health.watchdog_floor_s=1", "train.health.watchdog_multiple=2"]),
}


def hashes(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def run(name, data, root, env):
    layout, steps, fault, extra = SCENARIOS[name]
    out = root / ("stop" if name.startswith("stop") else name)
    cfg = validate(load_config("tiny-cpu", overrides(data, out, layout.get("zero", 0), layout.get("pp", 1),
                                                     steps, *extra)), env.world_size)
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(1, layout.get("pp", 1), create_gloo_process_groups=False)
    os.environ["MEGATRON_VIST2_FAULT"] = fault
    runs = []
    real_setup = trainer.setup
    trainer.setup = lambda *a: runs.append(real_setup(*a)) or runs[-1]
    before = hashes(out / "ckpt") if name == "stop-then" else None
    got = {}
    try:
        result = trainer.train(cfg, env)
        got.update(steps=result.steps, consumed=result.consumed_samples)
    except CheckpointError as exc:
        got["error"] = str(exc)
    finally:
        trainer.setup = real_setup
        os.environ.pop("MEGATRON_VIST2_FAULT")
    engine = runs[0].engine
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=layout.get("zero") == 3):
        params = full_parameters(engine.module)
    adam_steps = sorted({int(s["step"]) for s in engine.basic_optimizer.state.values() if "step" in s})
    parts = [None] * env.world_size
    dist.all_gather_object(parts, (params, adam_steps))
    merged = {}
    for p, _ in parts:
        merged.update(p)
    got.update(params=merged, adam_steps=[s for _, s in parts])
    if before is not None:
        got.update(before=before, after=hashes(out / "ckpt"))
    dist.barrier()
    if name == "stall":
        got["dumps"] = {f.name: f.read_text() for f in sorted((out / "watchdog").glob("*.txt"))}
    got["metrics"] = (out / "metrics.jsonl").read_text() if env.rank == 0 else None
    return got


def main(root, out_path):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(1, 1)
    torch.set_num_threads(1)
    work = Path(out_path).parent
    results = {name: run(name, data, work, env) for name in SCENARIOS}
    if env.rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
