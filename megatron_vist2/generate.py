"""Generate text from a checkpoint with global context compression (or the full-KV baseline).

    python -m megatron_vist2.generate --checkpoint runs/tiny-cpu/checkpoints --prompt "Fellow citizens"
    python -m megatron_vist2.generate --checkpoint CKPT --prompt-file speech.txt --max-new-tokens 200 --baseline

Streams the continuation to stdout, then reports the cache: bytes allocated, chunks compressed,
time to first token, decode speed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import run_cli


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint dir (with 'latest') or a step dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-file")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-context", type=int, default=8192)
    ap.add_argument("--baseline", action="store_true", help="plain causal LM with a full text KV cache")
    ap.add_argument("--tokenizer", help="override the tokenizer path stored in the checkpoint's config")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args(argv)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-file {path} does not exist")
        prompt = path.read_text(encoding="utf-8")
    else:
        prompt = args.prompt
    if not prompt.strip():
        from .inference import InferenceError
        raise InferenceError("the prompt is empty: give some text with --prompt or --prompt-file")

    from .inference import SamplingParams, Vist2Engine
    from .inference.load import load_for_inference
    from .parallel.distributed import init_distributed, shutdown
    init_distributed(1, 1)
    model, tok, cfg = load_for_inference(args.checkpoint, args.overrides, args.tokenizer)
    engine = Vist2Engine(model, tok, cfg, compress=not args.baseline, max_context=args.max_context)
    ids = tok.encode(prompt)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    out, shown, times = [], "", []
    t0 = time.perf_counter()

    def on_token(row, token):
        nonlocal shown
        times.append(time.perf_counter())
        out.append(token)
        text = tok.decode(out)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text

    engine.generate([ids], params, on_token)
    ttft = times[0] - t0 if times else float("nan")
    decode = (times[-1] - times[0]) / max(1, len(times) - 1)
    mode = "baseline (full text KV)" if args.baseline else f"VIST2 (rho = {cfg.model.compression_ratio:g})"
    print(f"\n\n--- {mode}: prompt {len(ids)} tokens, generated {len(out)}")
    print(f"KV cache allocated {engine.cache.nbytes / 2**20:.2f} MiB for max_context {args.max_context}; "
          f"in use: {int(engine.cache.visual_len[0])} visual + {int(engine.cache.text_len[0])} text "
          f"entries per layer; chunks compressed {engine.stats.chunks_compressed}")
    print(f"time to first token {ttft * 1000:.1f} ms, decode {decode * 1000:.1f} ms/token, "
          f"rendering {engine.stats.render_seconds * 1000:.1f} ms")
    shutdown()


if __name__ == "__main__":
    run_cli(main)
