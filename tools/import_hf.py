#!/usr/bin/env python3
"""Initialise a VIST2 model from Hugging Face checkpoints: a Qwen3 causal LM for the backbone and
a SigLIP / SigLIP2 vision tower for the encoder. Writes a weights-only consolidated checkpoint
that training starts from in any TP/PP/DP layout (checkpoint.init_from=OUT) and that the
inference and export tools read.

    python tools/import_hf.py --preset 0.6b --qwen3 hf/Qwen3-0.6B --siglip hf/siglip2-base --out runs/init

Parts not imported (always the aligner; the encoder without --siglip; the backbone without
--qwen3) keep the preset's initialisation (train.seed). The config must describe the imported
models (sizes are checked field by field); vocabulary rows are padded for our layout, SigLIP's
position table is resized to our patch grid, its pooling head is left out (reported).
"""
import argparse
import time

from megatron_vist2.errors import run_cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="preset or YAML describing the model")
    ap.add_argument("--qwen3", help="a Qwen3ForCausalLM directory (safetensors)")
    ap.add_argument("--siglip", help="a SiglipVisionModel / SiglipModel directory (safetensors)")
    ap.add_argument("--out", required=True, help="new checkpoint directory")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.llm.vocab_size=151936")
    args = ap.parse_args()
    import torch
    from megatron_vist2.config import config_to_dict, load_config, validate
    from megatron_vist2.convert.qwen3 import import_backbone
    from megatron_vist2.checkpoint.sources import write_consolidated
    from megatron_vist2.convert.siglip import import_vision
    from megatron_vist2.models.vist2 import StagePart, Vist2Model
    from megatron_vist2.parallel.distributed import init_distributed, shutdown
    start = time.time()
    cfg = validate(load_config(args.preset, [*args.overrides, "parallel.tensor_parallel=1",
                                             "parallel.pipeline_parallel=1", "parallel.sequence_parallel=false"]), 1)
    imported = {}
    if args.qwen3:
        imported |= import_backbone(args.qwen3, cfg)
        print(f"backbone: {len(imported)} tensors from {args.qwen3}")
    if args.siglip:
        vision = import_vision(args.siglip, cfg)
        imported |= vision
        print(f"vision encoder: {len(vision)} tensors from {args.siglip}")
    init_distributed(1, 1)
    try:
        n = cfg.model.llm.num_layers
        part = StagePart(True, False, range(0)) if args.qwen3 else StagePart.whole(n)
        torch.manual_seed(cfg.train.seed)
        built = dict(Vist2Model(cfg, part=part).named_parameters())
    finally:
        shutdown()
    own = [name for name in built if name not in imported]
    print(f"initialised here (not imported): {len(own)} tensors, e.g. {', '.join(own[:3])}")

    def tensors():
        for name, t in {**built, **imported}.items():
            yield name, "param", t.detach().float()
    out = write_consolidated(args.out, "step_0000000", tensors(),
                             {"step": 0, "consumed_samples": 0, "layout": None, "imported_from":
                              {"qwen3": args.qwen3, "siglip": args.siglip}},
                             config_to_dict(cfg), {"client": {"step": 0, "consumed_samples": 0}})
    print(f"wrote {out} in {time.time() - start:.1f} s; start training from it with "
          f"checkpoint.init_from={args.out}")


if __name__ == "__main__":
    run_cli(main)
