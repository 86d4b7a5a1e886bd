"""Generate text from a checkpoint with global context compression (or the full-KV baseline).

    python -m megatron_vist2.generate --checkpoint runs/tiny-cpu/checkpoints --prompt "Fellow citizens"
    python -m megatron_vist2.generate --checkpoint CKPT --prompt-file speech.txt --max-new-tokens 200 --baseline

Stops at the tokenizer's end-of-sequence token (--ignore-eos: not), at --stop strings and after
--max-new-tokens; --chat wraps the prompt in the tokenizer's chat template. Streams the
continuation to stdout, then reports the cache: bytes allocated, chunks compressed,
time to first token, decode speed.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .errors import run_cli


def check_flags(ap: argparse.ArgumentParser, args) -> None:
    """Out-of-range sampling flags end in one line naming the flag (argparse's error, exit 2)."""
    if args.max_new_tokens < 1:
        ap.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.max_context < 2:
        ap.error(f"--max-context must be >= 2 tokens, got {args.max_context}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        ap.error(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not math.isfinite(args.top_p) or not 0.0 < args.top_p <= 1.0:
        ap.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")


def read_prompt(args) -> str:
    from .inference import InferenceError
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise InferenceError(f"--prompt-file {path} does not exist or is not a file")
        try:
            prompt = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InferenceError(f"--prompt-file {path} is not UTF-8 text (byte {exc.start}: "
                                 f"{exc.reason}); convert it, e.g. iconv -t UTF-8") from None
    else:
        prompt = args.prompt
    if not prompt.strip():
        raise InferenceError("the prompt is empty: give some text with --prompt or --prompt-file")
    return prompt


class _StopString(Exception):
    pass


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
    ap.add_argument("--tokenizer", help="override the tokenizer stored with the checkpoint")
    ap.add_argument("--stop", action="append", default=[], help="stop when the output contains this text "
                    "(repeatable); generation also stops at the tokenizer's end-of-sequence token")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template "
                    "(a user turn, then the assistant's turn to answer)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args(argv)
    check_flags(ap, args)
    prompt = read_prompt(args)

    from .convert.tokens import chat_template, eos_id
    from .inference import InferenceError, SamplingParams, Vist2Engine
    from .inference.load import load_for_inference
    from .parallel.distributed import init_distributed, shutdown
    from .checkpoint.format import read_manifest, resolve_tag_dir
    manifest = read_manifest(resolve_tag_dir(args.checkpoint))
    init_distributed(1, 1)
    model, tok, cfg = load_for_inference(args.checkpoint, args.overrides, args.tokenizer)
    renders = not args.baseline and cfg.model.context == "vist2"     # the controls render nothing
    if renders and not manifest.get("step"):
        print(f"warning: {args.checkpoint} is at step 0 (e.g. right after tools/import_hf.py): its vision "
              f"encoder and aligner were never trained, so VIST2 mode reads compressed chunks through "
              f"untrained weights and the output is not meaningful; train first, or pass --baseline "
              f"to use the backbone alone", file=sys.stderr)
    if args.chat:
        if not chat_template(tok):
            raise InferenceError(f"--chat: the tokenizer {tok.path} has no chat template (a Hugging Face "
                                 f"tokenizer with chat_template is needed); drop --chat")
        prompt = tok.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    if renders:                                # compressed chunks are read from their renders
        from .data.font_coverage import warn_missing_glyphs
        warn_missing_glyphs(cfg.model.render, [prompt], "the prompt", lambda m: print(m, file=sys.stderr))
    # the model's own mode (VIST2 compression, or a control's) unless --baseline asks for full text
    engine = Vist2Engine(model, tok, cfg, compress=False if args.baseline else None,
                         max_context=args.max_context)
    ids = tok.encode(prompt)
    if len(ids) >= args.max_context:
        raise InferenceError(f"the prompt has {len(ids)} tokens, --max-context is {args.max_context}: "
                             f"raise --max-context or shorten the prompt")
    eos = None if args.ignore_eos else eos_id(tok)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, stop_tokens=() if eos is None else (eos,))
    out, shown, times = [], "", []
    t0 = time.perf_counter()

    def on_token(row, token):
        nonlocal shown
        times.append(time.perf_counter())
        out.append(token)
        if token == eos:
            return
        text = tok.decode(out)
        hit = min((text.find(x) for x in args.stop if x in text), default=-1)
        sys.stdout.write(text[len(shown):hit if hit >= 0 else None])
        sys.stdout.flush()
        shown = text
        if hit >= 0:
            raise _StopString

    try:
        engine.generate([ids], params, on_token)
        reason = "end-of-sequence token" if out and out[-1] == eos else "--max-new-tokens or --max-context"
    except _StopString:
        reason = "stop string"
    ttft = times[0] - t0 if times else float("nan")
    decode = (times[-1] - times[0]) / max(1, len(times) - 1)
    mode = {"full": "baseline (full text KV)", "window": "window control (current chunk only)",
            "vist2": f"VIST2 (rho = {cfg.model.compression_ratio:g})"}[engine.mode]
    print(f"\n\n--- {mode}: prompt {len(ids)} tokens, generated {len(out)} (stopped by {reason})")
    print(f"KV cache allocated {engine.cache.nbytes / 2**20:.2f} MiB for max_context {args.max_context}; "
          f"in use: {int(engine.cache.visual_len[0])} visual + {int(engine.cache.text_len[0])} text "
          f"entries per layer; chunks compressed {engine.stats.chunks_compressed}")
    print(f"time to first token {ttft * 1000:.1f} ms, decode {decode * 1000:.1f} ms/token, "
          f"rendering {engine.stats.render_seconds * 1000:.1f} ms")
    shutdown()


if __name__ == "__main__":
    run_cli(main)
