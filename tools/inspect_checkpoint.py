#!/usr/bin/env python3
"""Print what a checkpoint holds: format, layout, step, samples and tokens seen, the model
config, and every parameter's shape (and tensor-parallel split) - without loading the tensors.

    python tools/inspect_checkpoint.py runs/tiny-cpu/checkpoints [--params] [--json]
"""
import argparse
import json
import math

from megatron_vist2.errors import run_cli


def summary(source) -> dict:
    cfg = source.config
    steps = source.client.get("step")
    samples = source.client.get("consumed_samples") or 0
    seq = cfg["data"]["seq_length"]
    params = {n: list(source.shape(n)) for n in source.names()}
    return {"checkpoint": str(source.step_dir),
            "format": source.manifest.get("format", "deepspeed"),
            "layout": source.layout if source.layout else source.manifest.get("source_layout"),
            "step": steps, "consumed_samples": samples,
            "positions_seen": samples * seq,          # text + visual positions of packed rows
            "tokenizer_sha256": source.client.get("tokenizer_sha256"),
            "model": cfg["model"],
            "parameters": sum(math.prod(s) for s in params.values()),
            "tensors": params}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint dir (with 'latest') or a step dir")
    ap.add_argument("--params", action="store_true", help="list every parameter with its shape")
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args()
    from megatron_vist2.checkpoint.sources import open_checkpoint
    s = summary(open_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(s, indent=1))
        return
    llm, vision = s["model"]["llm"], s["model"]["vision"]
    print(f"checkpoint        {s['checkpoint']} ({s['format']})")
    print(f"layout            {s['layout']}")
    print(f"step              {s['step']}  ({s['consumed_samples']:,} samples, "
          f"{s['positions_seen']:,} positions seen)")
    print(f"model             {s['parameters']:,} parameters (padded vocabulary rows included): "
          f"LLM {llm['num_layers']} x {llm['hidden_size']} (heads {llm['num_heads']}, KV "
          f"{llm['num_kv_heads']}, vocab {llm['vocab_size']}), ViT {vision['num_layers']} x "
          f"{vision['hidden_size']}")
    print(f"tokenizer sha256  {s['tokenizer_sha256']}")
    if args.params:
        width = max(len(n) for n in s["tensors"])
        for name, shape in s["tensors"].items():
            print(f"  {name:<{width}}  {tuple(shape)}")


if __name__ == "__main__":
    run_cli(main)
