"""Worker for the parity tests: trains 3 steps in every scenario of its world size (tensor x
pipeline x data parallel, ZeRO stage) with the trainer's own engine, schedule and step; rank 0
saves losses + full parameters (tensor-parallel shards joined, pipeline stages merged), and, per
step, the elements this rank handed to reduction collectives with its trainable parameter count
(tests/distributed/collectives.py)."""
import sys
from types import SimpleNamespace

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from megatron_vist2.config import (data_parallel_size, gradient_accumulation_steps, load_config,
                                   ocr_aux_loss, validate)
from megatron_vist2.data.dataset import GlobalBatchSampler, PackedVist2Dataset
from megatron_vist2.data.ocr_targets import OcrChunkDataset
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.parallel.distributed import init_distributed
from tests.distributed.collectives import COUNTER
from tests.distributed.gather import full_parameters
from megatron_vist2.parallel.random import seed_runtime_rng
from megatron_vist2.training.cursor_attention import terms_per_position
from megatron_vist2.training.ocr_stage import collate_for
from megatron_vist2.training.trainer import build_model, make_engine, make_schedule, train_step, train_step_front
from tests.distributed.scenario import SCENARIOS, STEPS, scenario_overrides


def run(cfg, env, layout, tok):
    dp, gas = data_parallel_size(cfg, env.world_size), gradient_accumulation_steps(cfg, env.world_size)
    model = build_model(cfg, env)
    engine = make_engine(cfg, env, model)
    schedule = make_schedule(cfg, env, engine)
    it = None
    if model.part.first:
        indexed = open_indexed(cfg.data.train_prefix, tok)
        ds = OcrChunkDataset(indexed, tok, cfg, cfg.train.seed) if layout.ocr == "front" else \
            PackedVist2Dataset(indexed, tok, cfg, cfg.train.seed, ocr_targets=ocr_aux_loss(cfg))
        sampler = GlobalBatchSampler(0, cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size,
                                     parallel_state.get_data_parallel_rank(), dp, STEPS)
        it = iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_for(cfg)))
    seed_runtime_rng(cfg.train.seed)           # both sides draw dropout masks from the seed's start
    losses, reduced = [], []
    for _ in range(STEPS):
        COUNTER.take()
        if layout.ocr == "front":
            losses.append(train_step_front(schedule, [next(it) for _ in range(gas)], gas, dp))
        else:
            losses.append(train_step(schedule, [next(it) for _ in range(gas)] if it is not None else None,
                                     gas, dp, cfg.data.seq_length, ocr_weight=cfg.train.ocr_weight,
                                     cursor_attention=(cfg.train.cursor_attention_weight, terms_per_position(cfg))))
        reduced.append(COUNTER.take())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=layout.zero == 3):
        state = full_parameters(engine.module)
    parts = [None] * env.world_size
    dist.all_gather_object(parts, state)           # every stage's parameters, by global name
    engine.destroy()
    merged = {}
    for part in parts:
        merged.update(part)
    return {"losses": losses, "params": merged, "reduced": reduced, "trainable": trainable}




def main(root, out_path):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(1, 1)
    COUNTER.install()                          # before any engine: DeepSpeed captures some functions
    tok = load_tokenizer(f"{root}/tok.model")
    results = {}
    for name, layout in SCENARIOS.items():
        if layout.world != env.world_size:
            continue
        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(layout.tp, layout.pp, create_gloo_process_groups=False)
        cfg = validate(load_config("tiny-cpu", scenario_overrides(data, layout)),
                                    env.world_size)
        results[name] = run(cfg, env, layout, tok)
        print(f"rank {env.rank}: {name} losses {results[name]['losses']}", flush=True)
    if env.rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
