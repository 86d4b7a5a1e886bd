"""2-rank worker for test_deepspeed_dp.py: trains 3 steps under each ZeRO stage with the
trainer's own engine and step, and saves losses + gathered parameters (rank 0)."""
import sys
from types import SimpleNamespace

import deepspeed
import torch
from torch.utils.data import DataLoader

from megatron_vist2.config import (data_parallel_size, gradient_accumulation_steps, load_config,
                                   validate)
from megatron_vist2.data.dataset import GlobalBatchSampler, PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.parallel.distributed import init_distributed
from megatron_vist2.training.trainer import build_model, make_engine, train_step
from tests.distributed.scenario import STEPS, ZERO_STAGES, scenario_overrides


def main(root, out_path):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(1, 1)
    results = {}
    for zero in ZERO_STAGES:
        cfg = validate(load_config("tiny-cpu", scenario_overrides(data, zero)), env.world_size)
        dp, gas = data_parallel_size(cfg, env.world_size), gradient_accumulation_steps(cfg, env.world_size)
        tok = load_tokenizer(cfg.data.tokenizer)
        ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
        model = build_model(cfg, env)
        engine = make_engine(cfg, env, model)
        sampler = GlobalBatchSampler(0, cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size,
                                     env.rank, dp, STEPS)
        it = iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
        losses = [train_step(engine, [next(it) for _ in range(gas)], dp) for _ in range(STEPS)]
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=zero == 3):
            state = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        results[zero] = {"losses": losses, "params": state}
        engine.destroy()
    if env.rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
