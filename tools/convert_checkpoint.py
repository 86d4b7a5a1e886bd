#!/usr/bin/env python3
"""Export the language backbone of a checkpoint as a Hugging Face Qwen3ForCausalLM directory.

    python tools/convert_checkpoint.py --checkpoint runs/tiny-cpu/checkpoints --out exported/tiny-qwen3

Reads checkpoints written by the trainer with TP = 1 and ZeRO 0-2 (full weights in one file).
The directory loads offline with ``Qwen3ForCausalLM.from_pretrained(out)`` and gives the same
logits as our model on text-only input (tested). The tokenizer is copied beside it: a Hugging
Face tokenizer directory as is, a sentencepiece model as ``tokenizer.model``.
"""
import argparse
import shutil
from pathlib import Path

from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint dir (with 'latest') or a step dir")
    ap.add_argument("--out", required=True, help="new output directory")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard")
    args = ap.parse_args()
    from megatron_vist2.config import config_from_dict, validate
    from megatron_vist2.convert.qwen3 import export_backbone
    from megatron_vist2.training.checkpoint import read_model_state
    tag_dir, state = read_model_state(args.checkpoint)
    cfg = validate(config_from_dict(state["config"]))
    out = export_backbone(state["module"], cfg, args.out, int(args.shard_gb * 2**30))
    tok = Path(cfg.data.tokenizer)
    if tok.is_dir():
        for f in tok.iterdir():
            if f.is_file():
                shutil.copy(f, out / f.name)
    elif tok.is_file():
        shutil.copy(tok, out / "tokenizer.model")
    print(f"wrote {out} (Qwen3ForCausalLM, {cfg.model.llm.num_layers} layers, vocab "
          f"{cfg.model.llm.vocab_size}) from {tag_dir}")


if __name__ == "__main__":
    run_cli(main)
