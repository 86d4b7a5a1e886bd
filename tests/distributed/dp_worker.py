"""2-rank worker for test_deepspeed_dp.py: trains 3 steps in each scenario (tensor-parallel size x
ZeRO stage) with the trainer's own engine and step; rank 0 saves losses + full parameters."""
import sys
from types import SimpleNamespace

import deepspeed
import torch
from megatron.core import parallel_state
from torch.utils.data import DataLoader

from megatron_vist2.config import (data_parallel_size, gradient_accumulation_steps, load_config,
                                   validate_for_training)
from megatron_vist2.data.dataset import GlobalBatchSampler, PackedVist2Dataset, collate
from megatron_vist2.data.indexed import open_indexed
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.parallel.distributed import init_distributed
from megatron_vist2.parallel.gather import full_parameters
from megatron_vist2.training.trainer import build_model, make_engine, train_step
from tests.distributed.scenario import SCENARIOS, STEPS, scenario_overrides


def main(root, out_path):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(1, 1)
    results = {}
    for name, (tp, zero, sp) in SCENARIOS.items():
        if parallel_state.get_tensor_model_parallel_world_size() != tp:
            parallel_state.destroy_model_parallel()
            parallel_state.initialize_model_parallel(tp, 1, create_gloo_process_groups=False)
        cfg = validate_for_training(load_config("tiny-cpu", scenario_overrides(data, zero, tp, sp)),
                                    env.world_size)
        dp, gas = data_parallel_size(cfg, env.world_size), gradient_accumulation_steps(cfg, env.world_size)
        tok = load_tokenizer(cfg.data.tokenizer)
        ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, cfg.train.seed)
        model = build_model(cfg, env)
        engine = make_engine(cfg, env, model)
        sampler = GlobalBatchSampler(0, cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size,
                                     parallel_state.get_data_parallel_rank(), dp, STEPS)
        it = iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
        losses = [train_step(engine, [next(it) for _ in range(gas)], dp) for _ in range(STEPS)]
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=zero == 3):
            state = full_parameters(engine.module)
        results[name] = {"losses": losses, "params": state}
        engine.destroy()
    if env.rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
