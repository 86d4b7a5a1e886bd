"""Worker for test_async_checkpoints: in each layout, train one step, save it synchronously, move
that checkpoint aside, save the same state again through the background writer, and record on
rank 0 which files differ (byte for byte) between the two step directories."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist
from megatron.core import parallel_state

from megatron_vist2.config import load_config, validate
from megatron_vist2.parallel.distributed import init_distributed
from megatron_vist2.checkpoint.async_write import AsyncWriter
from megatron_vist2.checkpoint.save import save_checkpoint
from megatron_vist2.training.trainer import build_model, make_engine, make_schedule, train_step
from tests.distributed.scenario import Layout, scenario_overrides

# ZeRO-partitioned optimizer shards; pipeline stages in directories of their own (a TP2 layout
# was checked the same way once: 10 files, equal; left out to keep the launch short)
LAYOUTS = {"dp2-zero2": Layout(2, zero=2), "pp2-zero1": Layout(2, pp=2, zero=1)}


def files(step_dir: Path) -> dict:
    return {str(f.relative_to(step_dir)): f.read_bytes() for f in sorted(step_dir.rglob("*")) if f.is_file()}


def run(cfg, env, tok_sha):
    from megatron_vist2.data.dataset import collate
    from megatron_vist2.data.dataset import PackedVist2Dataset
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    model = build_model(cfg, env)
    engine = make_engine(cfg, env, model)
    schedule = make_schedule(cfg, env, engine)
    gas = cfg.parallel.global_batch_size // (cfg.parallel.micro_batch_size * parallel_state.get_data_parallel_world_size())
    micro = None
    if model.part.first:
        tok = load_tokenizer(cfg.data.tokenizer)
        ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
        mb, r = cfg.parallel.micro_batch_size, parallel_state.get_data_parallel_rank()
        micro = [collate([ds[i] for i in range(j * mb, (j + 1) * mb)]) for j in range(r * gas, (r + 1) * gas)]
    train_step(schedule, micro, gas, parallel_state.get_data_parallel_world_size(), cfg.data.seq_length)
    root = Path(cfg.checkpoint.save_dir)
    save_checkpoint(engine, cfg, 1, 8, tok_sha, log=lambda *_: None)
    if env.rank == 0:
        root.rename(root.with_name("sync"))
    dist.barrier()
    writer = AsyncWriter(lambda *_: None)
    save_checkpoint(engine, cfg, 1, 8, tok_sha, log=lambda *_: None, writer=writer)
    writer.wait(env.device)
    engine.destroy()
    if env.rank != 0:
        return None
    sync, background = files(root.with_name("sync") / "step_0000001"), files(root / "step_0000001")
    return {"sync": sorted(sync), "async": sorted(background),
            "differ": sorted(n for n in sync if background.get(n) != sync[n]),
            "latest": (root / "latest").read_text(), "partial": sorted(p.name for p in root.glob("*.partial"))}


def main(root, out_dir):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(1, 1)
    results = {}
    for name, layout in LAYOUTS.items():
        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(layout.tp, layout.pp, create_gloo_process_groups=False)
        cfg = validate(load_config("tiny-cpu", scenario_overrides(data, layout) + [
            f"checkpoint.save_dir={out_dir}/{name}/ckpt"]), env.world_size)
        results[name] = run(cfg, env, "0" * 64)
    if env.rank == 0:
        (Path(out_dir) / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
