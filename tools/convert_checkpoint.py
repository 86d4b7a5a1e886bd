#!/usr/bin/env python3
"""Export a checkpoint as a Hugging Face directory: the language backbone as a plain
Qwen3ForCausalLM (LlamaForCausalLM for a backbone without QK-norm), or (--vist2) the whole VIST2
model for trust_remote_code. The output directory must be new (or empty); the tokenizer comes
from the checkpoint's stored copy, so the export works from any working directory.

    python tools/convert_checkpoint.py --checkpoint runs/tiny-cpu/checkpoints --out exported/tiny-qwen3
    python tools/convert_checkpoint.py --checkpoint runs/tiny-cpu/checkpoints --out exported/tiny-vist2 --vist2

The --vist2 directory holds the weights, configuration_vist2.py / modeling_vist2.py, the renderer's
source and font and the tokenizer: AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
gives our logits on interleaved input and our engine's greedy tokens (tested).

Reads any checkpoint the trainer writes (any tensor/pipeline/data-parallel layout, ZeRO 0-3) or a
consolidated one (tools/reshard_checkpoint.py), one parameter at a time, on the CPU. The
directory loads offline with ``Qwen3ForCausalLM.from_pretrained(out)`` and gives the same logits
as our model on text-only input (tested). The tokenizer is copied beside it: a Hugging Face
tokenizer directory as is, a sentencepiece model as ``tokenizer.model``.
"""
import argparse
import time
from pathlib import Path

from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint dir (with 'latest') or a step dir")
    ap.add_argument("--out", required=True, help="new output directory")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard")
    ap.add_argument("--vist2", action="store_true", help="the whole model (trust_remote_code), not the backbone")
    ap.add_argument("--tokenizer", help="the tokenizer to bundle (default: the copy stored in the checkpoint, "
                                        "else the path its config names)")
    args = ap.parse_args()
    if args.shard_gb <= 0:
        ap.error(f"--shard-gb must be > 0, got {args.shard_gb}")
    from megatron_vist2.config import recorded_config, validate
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.convert.qwen3 import export_backbone, hf_class_name
    from megatron_vist2.checkpoint.sources import open_checkpoint
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.checkpoint.format import check_writable_target
    from megatron_vist2.checkpoint.tokenizer_record import copy_tokenizer, find_tokenizer
    check_writable_target(args.out)                # before reading anything
    start = time.time()
    source = open_checkpoint(args.checkpoint)
    cfg = validate(recorded_config(source.config, source.step_dir / "config.yaml"))
    context = cfg.model.context
    if args.vist2 and context != "vist2":
        raise CheckpointError(f"--vist2 exports the VIST2 model, but {source.step_dir / 'config.yaml'} "
                              f"records model.context '{context}' (a control without vision encoder): "
                              f"drop --vist2 to export it as a plain {hf_class_name(cfg)}")
    # the export must carry its tokenizer: refuse rather than write a directory without one
    tok = Path(find_tokenizer(source.step_dir, cfg.data.tokenizer, source.client.get("tokenizer_sha256"),
                              args.tokenizer, identify=lambda p: load_tokenizer(p).sha256))
    tokenizer = load_tokenizer(str(tok))
    weight = lambda name: source.tensor(name, "param")          # noqa: E731
    if args.vist2:
        from megatron_vist2.convert.vist2 import export_vist2
        out = export_vist2(weight, cfg, str(tok), args.out, int(args.shard_gb * 2**30))
        print(f"wrote {out} (VIST2, trust_remote_code) from {source.step_dir} (saved as {source.layout}) "
              f"in {time.time() - start:.1f} s; load it with AutoModelForCausalLM.from_pretrained"
              f"({str(out)!r}, trust_remote_code=True)")
        return
    out = export_backbone(weight, cfg, args.out, int(args.shard_gb * 2**30), tokenizer)
    copy_tokenizer(tok, out, "tokenizer.model")
    name = hf_class_name(cfg)
    print(f"wrote {out} ({name}, {cfg.model.llm.num_layers} layers, vocab "
          f"{cfg.model.llm.vocab_size}) from {source.step_dir} (saved as {source.layout}) in "
          f"{time.time() - start:.1f} s; load it with transformers.{name}.from_pretrained({str(out)!r})")
    if context == "text":
        print("the checkpoint is the text control (model.context text): the export is the whole model")
    elif context == "window":
        print(f"the checkpoint is the window control (model.context window): the export is its backbone, "
              f"which equals the control on inputs of one chunk ({cfg.model.chunk.text_tokens} tokens); "
              f"feed it chunk by chunk (or use our engine, which does) to reproduce the control")


if __name__ == "__main__":
    run_cli(main)
