#!/usr/bin/env python3
"""The exported VIST2 model's generate vs transformers' own Qwen3ForCausalLM generate, same
backbone weights, in one run.

The bench-cpu preset with random weights is exported (tools/convert_checkpoint.py --vist2's code
path) and loaded with trust_remote_code; its ``language_model`` is transformers' own
Qwen3ForCausalLM with the same weights, run with its default cache (DynamicCache, every token's
K/V kept). For each prompt length (real text from the bundled corpus), greedy, fp32, batch 1:
time to first token and time per generated token (from the times a streamer sees the
tokens arrive, runs of 1 + --gen tokens, the median of --repeat alternating trials), and the KV bytes each cache holds (VIST2: the
preallocated cache of its generate; Qwen3: the DynamicCache's tensors after the run). Then the
crossover: the shortest prompt from which VIST2 is faster.

    python benchmarks/hf_generate.py --tokenizer data/tokenizer/sotu.model [--lengths 512,...] [--gen 16]
"""
import argparse
import tempfile
import statistics
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from common import machine
from inference_setup import corpus_tokens
from megatron_vist2.config import load_config, validate
from megatron_vist2.convert.vist2 import export_vist2
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.models import Vist2Model
from megatron_vist2.parallel.distributed import init_distributed


def cache_bytes(cache) -> int:
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))


class Clock(BaseStreamer):
    """Records when each new token arrives (the first put() is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


@torch.no_grad()
def measure(model, ids, gen, vist2: bool):
    clock = Clock()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=1 + gen, do_sample=False, pad_token_id=0, streamer=clock,
                         return_dict_in_generate=True)
    new = clock.times[1:]
    kv = model.last_cache_bytes if vist2 else cache_bytes(getattr(out, "cache", None) or out.past_key_values)
    return new[0] - t0, (new[-1] - new[0]) / (len(new) - 1), kv
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="data/tokenizer/sotu.model")
    ap.add_argument("--lengths", default="512,2048,8192,16384")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3,
                    help="trials per length, the two systems alternating; the median is reported "
                         "(a first call at a new prompt length pays one-off kernel set-up costs)")
    args = ap.parse_args()
    print(machine())
    init_distributed(1, 1)
    cfg = validate(load_config("bench-cpu", [f"data.tokenizer={args.tokenizer}", "data.seq_length=32768"]))
    tok = load_tokenizer(args.tokenizer)
    torch.manual_seed(0)
    model = Vist2Model(cfg).eval()
    state = {n: p.detach() for n, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        out = export_vist2(state.__getitem__, cfg, args.tokenizer, f"{tmp}/vist2")
        vist2 = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
        qwen3 = vist2.language_model                            # transformers' Qwen3ForCausalLM, same weights
        lengths = [int(x) for x in args.lengths.split(",")]
        ids_all = corpus_tokens(tok, max(lengths))
        rows = []
        for m in (vist2, qwen3):                                # warm-up: first calls pay one-off costs
            m.generate(torch.tensor([ids_all[:200]]), max_new_tokens=2, do_sample=False, pad_token_id=0)
        print(f"{'prompt':>7} | {'TTFT VIST2':>10} {'Qwen3':>8} {'ratio':>6} | {'ms/tok VIST2':>12} {'Qwen3':>7} "
              f"{'ratio':>6} | {'KV VIST2':>9} {'Qwen3':>9} {'ratio':>6}")
        for n in lengths:
            ids = torch.tensor([ids_all[:n]])
            trials = [(measure(vist2, ids, args.gen, True), measure(qwen3, ids, args.gen, False))
                      for _ in range(args.repeat)]
            v, q = (tuple(statistics.median(t[k][i] for t in trials) for i in range(3)) for k in (0, 1))
            rows.append((n, v, q))
            print(f"{n:>7} | {v[0]:>9.3f}s {q[0]:>7.3f}s {q[0] / v[0]:>5.2f}x | {v[1] * 1e3:>12.1f} "
                  f"{q[1] * 1e3:>7.1f} {q[1] / v[1]:>5.2f}x | {v[2] / 2**20:>7.2f}Mi {q[2] / 2**20:>7.2f}Mi "
                  f"{q[2] / v[2]:>5.2f}x", flush=True)
        for what, i in (("time to first token", 0), ("time per token", 1), ("KV bytes", 2)):
            faster = [n for n, v, q in rows if v[i] < q[i]]
            print(f"crossover ({what}): " + (f"VIST2 better from {faster[0]} tokens" if faster
                                             else "VIST2 not better at these lengths"))


if __name__ == "__main__":
    main()
