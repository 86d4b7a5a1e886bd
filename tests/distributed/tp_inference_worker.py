"""2-rank worker for test_inference_tp.py: the engine and the training forward at TP = 2."""
import sys
from types import SimpleNamespace

import torch

from megatron_vist2.inference import Vist2Engine
from megatron_vist2.parallel.distributed import init_distributed
from tests.conftest import tiny_model
from tests.inference_helpers import engine_logits, streams, teacher_forced
from tests.distributed.tp_scenario import LENGTHS, OVERRIDES, PROMPTS


def main(root, out_path):
    data = SimpleNamespace(tokenizer=f"{root}/tok.model", train=f"{root}/train", valid=f"{root}/valid")
    env = init_distributed(2, 1)
    cfg, tok, ds, model = tiny_model(data, *OVERRIDES, "parallel.tensor_parallel=2", world_size=2)
    L = cfg.model.chunk.text_tokens
    data_streams = streams(ds, [n * L + extra for n, extra in LENGTHS], seed=1)
    engine = Vist2Engine(model, tok, cfg, compress=True, max_context=8 * L, batch_size=len(data_streams))
    got = engine_logits(engine, data_streams, [p(L) for p in PROMPTS], L)
    ref = [teacher_forced(model, ds, s) for s in data_streams]
    if env.rank == 0:
        torch.save({"engine": got, "reference": ref, "streams": data_streams}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
