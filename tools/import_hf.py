#!/usr/bin/env python3
"""Initialise a VIST2 model from Hugging Face checkpoints: a Qwen3 or Llama causal LM
(Qwen3ForCausalLM / LlamaForCausalLM) for the backbone and a SigLIP / SigLIP2 vision tower for the
encoder. Writes a weights-only consolidated checkpoint that training starts from in any TP/PP/DP
layout (checkpoint.init_from=OUT) and that the inference and export tools read.

    python tools/import_hf.py --preset 0.6b --llm hf/Qwen3-0.6B --siglip hf/siglip2-base --out runs/init
    python tools/import_hf.py --preset tiny-cpu --llm hf/SmolLM2-135M --out runs/smol   # Llama

The backbone's config (architecture, sizes, vocabulary, rope, tying) comes from --llm's
config.json, and its tokenizer (when the directory holds one) becomes data.tokenizer and is
stored with the checkpoint; overrides on the command line win, and a value that contradicts
config.json is refused naming our field. Parts not imported (always the aligner; the encoder
without --siglip; the backbone without --llm) keep the preset's initialisation (train.seed):
train them before generating in VIST2 mode. SigLIP's position table is resized to our patch
grid, its pooling head is left out (reported).
"""
import argparse
import time
from pathlib import Path

from megatron_vist2.errors import UserError, run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="preset or YAML for everything but the backbone's shape")
    ap.add_argument("--llm", "--qwen3", dest="llm", help="a Qwen3ForCausalLM or LlamaForCausalLM directory "
                    "(config.json + safetensors); its config sets model.llm.*")
    ap.add_argument("--siglip", help="a SiglipVisionModel / SiglipModel directory (safetensors)")
    ap.add_argument("--out", required=True, help="a new (or empty) checkpoint directory")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.llm.make_vocab_size_divisible_by=64")
    args = ap.parse_args()
    for flag, d in (("--llm", args.llm), ("--siglip", args.siglip)):
        if d and not Path(d).is_dir():
            raise UserError(f"{flag} {d} does not exist or is not a directory (a Hugging Face model "
                            f"directory with config.json and *.safetensors is expected)")
    if not (args.llm or args.siglip):          # a random-init checkpoint (e.g. for measurements)
        print("note: neither --llm nor --siglip given: every part keeps the preset's initialisation")
    import torch
    from megatron_vist2.config import config_to_dict, load_config, validate
    from megatron_vist2.convert.qwen3 import import_backbone, overrides_from_hf
    from megatron_vist2.checkpoint.sources import write_consolidated
    from megatron_vist2.convert.siglip import import_vision
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.models.vist2 import StagePart, Vist2Model
    from megatron_vist2.parallel.distributed import init_distributed, shutdown
    from megatron_vist2.checkpoint.format import check_writable_target
    check_writable_target(args.out)
    start = time.time()
    derived = overrides_from_hf(args.llm) if args.llm else []
    cfg = validate(load_config(args.preset, [*derived, *args.overrides, "parallel.tensor_parallel=1",
                                             "parallel.pipeline_parallel=1", "parallel.sequence_parallel=false"]), 1)
    tokenizer = None
    if args.llm and any(o.startswith("data.tokenizer=") for o in derived):
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        print(f"tokenizer: {cfg.data.tokenizer} ({tokenizer.vocab_size} pieces), stored with the checkpoint")
    imported = {}
    if args.llm:
        imported |= import_backbone(args.llm, cfg)
        print(f"backbone: {len(imported)} tensors from {args.llm} ({'Qwen3' if cfg.model.llm.qk_norm else 'Llama'}, "
              f"{cfg.model.llm.num_layers} layers x {cfg.model.llm.hidden_size}, vocab {cfg.model.llm.vocab_size})")
    if args.siglip:
        vision = import_vision(args.siglip, cfg)
        imported |= vision
        print(f"vision encoder: {len(vision)} tensors from {args.siglip}")
    init_distributed(1, 1)
    try:
        n = cfg.model.llm.num_layers
        part = StagePart(True, False, range(0)) if args.llm else StagePart.whole(n)
        torch.manual_seed(cfg.train.seed)
        built = dict(Vist2Model(cfg, part=part).named_parameters())
    finally:
        shutdown()
    own = [name for name in built if name not in imported]
    print(f"initialised here (not imported, untrained): {len(own)} tensors, e.g. {', '.join(own[:3])}")

    def tensors():
        for name, t in {**built, **imported}.items():
            yield name, "param", t.detach().float()
    sha = tokenizer.sha256 if tokenizer else None
    out = write_consolidated(args.out, "step_0000000", tensors(),
                             {"step": 0, "consumed_samples": 0, "layout": None, "tokenizer_sha256": sha,
                              "imported_from": {"llm": args.llm, "siglip": args.siglip}},
                             config_to_dict(cfg), {"client": {"step": 0, "consumed_samples": 0,
                                                              "tokenizer_sha256": sha}},
                             tokenizer=cfg.data.tokenizer if tokenizer else None)
    print(f"wrote {out} in {time.time() - start:.1f} s; start training from it with "
          f"checkpoint.init_from={args.out}")


if __name__ == "__main__":
    run_cli(main)
