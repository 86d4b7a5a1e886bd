"""Dropout under tensor parallelism: attention dropout draws from megatron's model-parallel
stream (a stream per tensor-parallel rank, through our CPU tracker on machines without CUDA) and
leaves the default stream alone; hidden dropout draws from the default stream, which
parallel/random.py seeds identically on every tensor-parallel rank. (The 2-rank parity suite
checks that TP2 with hidden dropout equals one process exactly.)"""
import torch
from megatron.core import tensor_parallel

from megatron_vist2.models.transformer import SelfAttention
from megatron_vist2.models.vist2 import model_parallel_config
from megatron_vist2.parallel.random import seed_runtime_rng


def attention(dropout):
    torch.manual_seed(0)
    return SelfAttention(32, 4, 2, 8, model_parallel_config(1), 0.02, 0.02, bias=False,
                         qk_norm_eps=1e-6, dropout=dropout).train()


def run(module, x, tp_rank):
    tensor_parallel.model_parallel_cuda_manual_seed(7, tp_rank=tp_rank)
    torch.manual_seed(123)
    out = module(x, None, None)
    return out, torch.rand(4)           # the next draw of the default stream after the forward


def test_attention_dropout_uses_the_model_parallel_stream(dist_env):
    x = torch.randn(6, 2, 32)
    plain, plain_next = run(attention(0.0), x, tp_rank=0)
    rank0, rank0_next = run(attention(0.5), x, tp_rank=0)
    again, _ = run(attention(0.5), x, tp_rank=0)
    rank1, rank1_next = run(attention(0.5), x, tp_rank=1)
    assert not torch.allclose(rank0, plain)                 # dropout is active in training
    assert torch.equal(rank0, again)                        # reproducible from the seed
    assert not torch.allclose(rank0, rank1)                 # TP ranks draw independent masks
    assert torch.equal(plain_next, rank0_next) and torch.equal(rank0_next, rank1_next)


def test_eval_mode_and_zero_rate_are_deterministic(dist_env):
    x = torch.randn(6, 2, 32)
    module = attention(0.5).eval()
    seed_runtime_rng(1)
    assert torch.equal(module(x, None, None), module(x, None, None))


def test_each_pipeline_stage_seeds_its_streams_from_its_own_seed(dist_env, monkeypatch):
    """As Megatron-LM: stage p's default CPU and CUDA generators and its tracked stream all start
    from seed + 100 p (megatron's seeding sets the CUDA generator itself: it must get that seed
    too, or every stage's GPU dropout restarts from the same one)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    cuda_seeds, defaults, tracked = [], [], []
    monkeypatch.setattr(torch.cuda, "manual_seed", cuda_seeds.append)
    for stage in (0, 1):
        monkeypatch.setattr(parallel_state, "get_pipeline_model_parallel_rank", lambda s=stage: s)
        seed_runtime_rng(1234)
        defaults.append(torch.rand(3))
        with get_cuda_rng_tracker().fork():
            tracked.append(torch.rand(3))
    assert cuda_seeds == [1234, 1334]
    torch.manual_seed(1334)
    assert torch.equal(defaults[1], torch.rand(3))
    assert not torch.equal(tracked[0], tracked[1])
