#!/usr/bin/env python3
"""Smoke check of an exported VIST2 model (tools/convert_checkpoint.py --vist2) on a device, as a
user runs it: load with trust_remote_code, move to the device in a dtype, a plain forward (what
lm-eval runs) and a cached greedy generate. Part of benchmarks/gpu_all.sh's smoke stage.

    python benchmarks/gpu_smoke_hf.py --model exported/vist2 --device cuda --dtype bf16
"""
import argparse
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="directory written by convert_checkpoint.py --vist2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--prompt", default="Fellow citizens of the Senate and of the House of Representatives")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args()
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=DTYPES[args.dtype])
    model = model.to(args.device).eval()
    sp = spm.SentencePieceProcessor(model_file=f"{args.model}/tokenizer.model")
    ids = torch.tensor([sp.encode(args.prompt)], device=args.device)
    with torch.no_grad():
        logits = model(ids).logits
    if logits.device.type != torch.device(args.device).type or not torch.isfinite(logits.float()).all():
        raise SystemExit(f"forward: logits on {logits.device}, finite: {bool(torch.isfinite(logits.float()).all())}")
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    print(f"exported model on {args.device} ({args.dtype}): forward logits {list(logits.shape)} finite; "
          f"generate {len(new)} tokens {sp.decode(new)!r} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
