#!/usr/bin/env python3
"""VIST2 inference vs the full-KV baseline, measured in one run, with the cost model beside it.

Sweep: prompts of --lengths tokens (real text from the bundled corpus), then --gen greedy tokens.
For each system: time to first token (prefill + first token), decode latency per token,
tokens/s, KV bytes (the cache tensors the engine allocated for that context), FLOPs split into LLM
linear / LLM attention / vision encoder / aligner (counted by the engine for what it ran), and CPU
rendering time. Then the crossover lengths, a long-writing workload from LongBench-Write
(its prompts, generation to their target length, capped by --write-cap), and PNG plots.

    python benchmarks/inference.py [--preset bench-cpu] [--lengths 1024,2048,...] [--gen 128]
    python benchmarks/inference.py --ttft-only --lengths 2048,4096,8192,16384   # prefill only
                                   [--repeat 3] [--threads N]
    # one GPU, bf16, the model built on the device (benchmarks/gpu_all.sh):
    python benchmarks/inference.py --preset 1.7b --device cuda --dtype bf16 --ttft-only \
        --lengths 2048,8192 --repeat 3 data.tokenizer=data/tokenizer/sotu.model

Prompt tokens come from the tokenized corpus (data/sotu_train.bin, the repository's data step);
a preset whose tokenizer is not built (e.g. 1.7b's data/tokenizer/qwen2) can take the bundled
one with ``data.tokenizer=data/tokenizer/sotu.model``: its ids are rows of any larger embedding,
and the engine samples only among the tokenizer's ids.

A third system, transformers' Qwen3ForCausalLM on the same backbone weights (convert/qwen3.py's
names, copied in memory; same device and dtype, sdpa), is timed for the time to first token (one
forward over the prompt computing the last position's logits, then the argmax), so the engine's
baseline is measured against the library a user would otherwise run (--no-transformers: not).
Decode against transformers' generate, and long writing: benchmarks/long_writing.py.

Cost model (docs/spec.md), for a context of n text tokens at rho = L / m:
  KV entries: n/rho + L (VIST2) vs n; prefill LLM tokens: n/rho + tail vs n, plus ViT + aligner
  per chunk; decode: LLM once per token, plus m visual tokens per finished chunk (linear FLOPs per
  generated token about (1 + 1/rho) x baseline), attention over n/rho + L keys vs n.
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from common import machine
from inference_setup import (DTYPES, add_device_args, benchmark_config, build_model, clock, corpus_tokens,
                             longbench_write, setup_device, transformers_backbone)
from megatron_vist2.data.tokenizer import load_tokenizer
from megatron_vist2.inference import Vist2Engine
from megatron_vist2.parallel.distributed import init_distributed


@torch.no_grad()
def transformers_ttft(hf, prompt) -> float:
    device = hf.device
    ids = torch.tensor([prompt], device=device)
    t0 = clock(device)
    hf(input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
    return clock(device) - t0


@torch.no_grad()
def run(model, tok, cfg, prompt, gen, compress):
    engine = Vist2Engine(model, tok, cfg, compress=compress, max_context=len(prompt) + gen + 1)
    device = engine.device
    t0 = clock(device)                         # GPU work is asynchronous: clock() synchronises
    logits = engine.prefill([prompt])
    token = logits.argmax(-1)
    ttft = clock(device) - t0
    prefill_flops = dict(engine.stats.flops)
    prefill_render = engine.stats.render_seconds
    steps = []
    for _ in range(gen):
        t = clock(device)
        token = engine.step(token).argmax(-1)
        steps.append(clock(device) - t)
    decode_flops = {k: (v - prefill_flops.get(k, 0)) / max(gen, 1) for k, v in engine.stats.flops.items()}
    decode = float(np.mean(steps)) if steps else float("nan")
    return {"ttft_s": ttft, "decode_s": decode, "tokens_per_s": 1 / decode,
            "kv_bytes": engine.cache.nbytes, "prefill_flops": prefill_flops,
            "decode_flops_per_token": decode_flops, "render_prefill_s": prefill_render,
            "render_decode_s": engine.stats.render_seconds - prefill_render,
            "chunks": engine.stats.chunks_compressed}


def predicted(cfg, n, gen):
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    total = n + gen
    kv = (-(-total // L) * m + L) / total
    llm_prefill = ((n // L) * m + n % L) / n
    return {"kv_ratio": kv, "prefill_llm_token_ratio": llm_prefill,
            "decode_linear_ratio": 1 + 1 / (L / m), "decode_keys_ratio": ((total // L) * m + L / 2) / total}


def fmt_flops(f, unit=1e9, name="G"):
    return " ".join(f"{k}={v / unit:.2f}{name}" for k, v in sorted(f.items()))


def plot(results, out_dir: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lengths = [r["n"] for r in results]
    for key, label, name in (("ttft_s", "time to first token (s)", "ttft.png"),
                             ("decode_s", "decode latency per token (s)", "decode_latency.png"),
                             ("kv_bytes", "KV cache bytes", "kv_bytes.png")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for system in ("baseline", "vist2"):
            ax.plot(lengths, [r[system][key] for r in results], marker="o", label=system)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-cpu")
    ap.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384,32768")
    ap.add_argument("--gen", type=int, default=128)
    add_device_args(ap, threads=os.cpu_count() or 1)
    ap.add_argument("--write-prompts", type=int, default=4,
                    help="LongBench-Write prompts to run (0: none; the comparison with transformers' "
                         "generate is benchmarks/long_writing.py)")
    ap.add_argument("--no-download", action="store_true", help="never pip-download LongBench-Write")
    ap.add_argument("--no-transformers", action="store_true",
                    help="skip transformers' Qwen3 (the peer's time to first token)")
    ap.add_argument("--write-min-words", type=int, default=2000,
                    help="use the prompts whose target length is at least this many words")
    ap.add_argument("--write-cap", type=int, default=4096, help="max tokens generated per prompt")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--no-plot", action="store_true", help="print the numbers only (no matplotlib needed)")
    ap.add_argument("--ttft-only", action="store_true",
                    help="time to first token of the three systems only (no decode, no LongBench-Write)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="--ttft-only: time each system this many times, alternating, and report "
                         "the median (a shared machine's load comes in bursts)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if not args.no_plot:                       # checked before the sweep, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("matplotlib is not installed (the plots need it): pip install -e '.[bench]' "
                     "(or pip install matplotlib==3.11.2), or pass --no-plot")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    device = setup_device(args)
    init_distributed(1, 1)
    cfg = benchmark_config(args.preset, args.overrides)
    tok = load_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, device, DTYPES[args.dtype])
    L, m = cfg.model.chunk.text_tokens, cfg.model.visual_tokens_per_chunk
    print(f"machine: {machine()} | {device} | torch {torch.__version__}")
    print(f"preset {args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"L = {L}, m = {m}, rho = {L // m}, random weights, {args.dtype}, greedy")
    lengths = [int(x) for x in args.lengths.split(",")]
    text = corpus_tokens(tok, max(lengths))
    hf = None if args.no_transformers else transformers_backbone(model, cfg, max(lengths) + args.gen + 1)
    if hf is not None:
        transformers_ttft(hf, text[:64])                               # warm-up
    if args.ttft_only:
        run(model, tok, cfg, text[:64], 0, False)                          # warm-up
        run(model, tok, cfg, text[:128], 0, True)
        print(f"{'prompt':>7s} {'transformers':>13s} {'baseline':>9s} {'vist2':>9s} "
              f"{'transformers/baseline':>22s} {'transformers/vist2':>19s}   "
              f"(median of {args.repeat}, systems alternating; load {os.getloadavg()[0]:.1f})")
        for n in lengths:
            times = {"hf": [], "baseline": [], "vist2": []}
            for _ in range(args.repeat):           # alternate, so a burst of load hits all three
                times["hf"].append(transformers_ttft(hf, text[:n]) if hf is not None else float("nan"))
                times["baseline"].append(run(model, tok, cfg, text[:n], 0, False)["ttft_s"])
                times["vist2"].append(run(model, tok, cfg, text[:n], 0, True)["ttft_s"])
            t_hf, b, v = (float(np.median(times[k])) for k in ("hf", "baseline", "vist2"))
            print(f"{n:7d} {t_hf:12.3f}s {b:8.3f}s {v:8.3f}s {t_hf / b:22.2f} {t_hf / v:19.2f}   "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        return
    results = []
    for n in lengths:
        row = {"n": n, "predicted": predicted(cfg, n, args.gen)}
        for system, compress in (("baseline", False), ("vist2", True)):
            row[system] = run(model, tok, cfg, text[:n], args.gen, compress)
        row["transformers_ttft_s"] = t_hf = transformers_ttft(hf, text[:n]) if hf is not None else float("nan")
        b, v = row["baseline"], row["vist2"]
        p = row["predicted"]
        print(f"\nprompt {n} tokens, {args.gen} generated")
        print(f"  time to first token  baseline {b['ttft_s']:8.3f}s  vist2 {v['ttft_s']:8.3f}s  "
              f"speed-up {b['ttft_s'] / v['ttft_s']:5.2f}x  (LLM prefill tokens predicted x{p['prefill_llm_token_ratio']:.3f})")
        print(f"                       transformers {t_hf:8.3f}s: / baseline {t_hf / b['ttft_s']:5.2f}x, "
              f"/ vist2 {t_hf / v['ttft_s']:5.2f}x")
        print(f"  decode per token     baseline {b['decode_s'] * 1e3:8.2f}ms vist2 {v['decode_s'] * 1e3:8.2f}ms "
              f"speed-up {b['decode_s'] / v['decode_s']:5.2f}x  (predicted: linear x{p['decode_linear_ratio']:.2f}, "
              f"keys x{p['decode_keys_ratio']:.3f})")
        print(f"  tokens/s             baseline {b['tokens_per_s']:8.1f}   vist2 {v['tokens_per_s']:8.1f}")
        print(f"  KV bytes             baseline {b['kv_bytes'] / 2**20:8.2f}MiB vist2 {v['kv_bytes'] / 2**20:8.2f}MiB "
              f"ratio {v['kv_bytes'] / b['kv_bytes']:.3f}  (predicted {p['kv_ratio']:.3f})")
        print(f"  prefill FLOPs        baseline {fmt_flops(b['prefill_flops'])}")
        print(f"                       vist2    {fmt_flops(v['prefill_flops'])}")
        print(f"  decode FLOPs/token   baseline {fmt_flops(b['decode_flops_per_token'], 1e6, 'M')}")
        print(f"                       vist2    {fmt_flops(v['decode_flops_per_token'], 1e6, 'M')}")
        print(f"  rendering (CPU)      prefill {v['render_prefill_s'] * 1e3:.1f}ms for {n // L} chunks, "
              f"decode {v['render_decode_s'] * 1e3:.1f}ms")
        results.append(row)

    def crossover(key):
        wins = [r["n"] for r in results if r["vist2"][key] < r["baseline"][key]]
        return min(wins) if wins else None
    print(f"\ncrossover (smallest swept prompt where VIST2 is faster): time to first token "
          f"{crossover('ttft_s')}, decode per token {crossover('decode_s')}")

    prompts = [p for p in longbench_write(not args.no_download)
               if p["length"] >= args.write_min_words][:args.write_prompts] if args.write_prompts > 0 else []
    if prompts:
        print(f"\nLongBench-Write (first {len(prompts)} prompts asking for >= {args.write_min_words} words; "
              f"generation to the target length, about 1.5 tokens per word, capped at {args.write_cap}):")
    writing = []
    for item in prompts:
        ids = tok.encode(item["prompt"])
        gen = min(args.write_cap, int(item["length"] * 1.5))
        b, v = (run(model, tok, cfg, ids, gen, c) for c in (False, True))
        total_b = b["ttft_s"] + gen * b["decode_s"]
        total_v = v["ttft_s"] + gen * v["decode_s"]
        writing.append({"prompt_tokens": len(ids), "generated": gen, "baseline": b, "vist2": v})
        print(f"  {len(ids):4d} prompt + {gen:5d} generated: total baseline {total_b:6.2f}s vist2 "
              f"{total_v:6.2f}s ({total_b / total_v:.2f}x), KV {v['kv_bytes'] / b['kv_bytes']:.3f} of baseline, "
              f"{v['chunks']} chunks compressed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference_results.json").write_text(json.dumps({"sweep": results, "writing": writing},
                                                           indent=1, default=float))
    if args.no_plot:
        print(f"\nwrote {out}/inference_results.json (--no-plot)")
    else:
        plot(results, out)
        print(f"\nwrote {out}/ttft.png, decode_latency.png, kv_bytes.png, inference_results.json")


if __name__ == "__main__":
    main()
