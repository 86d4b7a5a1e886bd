#!/usr/bin/env python3
"""Print parameter counts (vision encoder, aligner, LLM, total) of presets, from the config alone.

    python tools/model_size.py                 # every preset
    python tools/model_size.py --preset 8b model.llm.num_layers=32
"""
import argparse

from megatron_vist2.config import available_presets, load_config, validate
from megatron_vist2.errors import run_cli
from megatron_vist2.config import analytic_parameter_counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", help="preset name or YAML (repeatable; default: all)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every preset")
    args = ap.parse_args()
    presets = args.preset or available_presets()
    print(f"{'preset':<10}{'vision':>16}{'aligner':>14}{'llm':>18}{'total':>18}{'rho':>6}")
    for name in presets:
        cfg = validate(load_config(name, args.overrides))
        c = analytic_parameter_counts(cfg)
        print(f"{name:<10}{c['vision']:>16,}{c['aligner']:>14,}{c['llm']:>18,}{c['total']:>18,}"
              f"{cfg.model.compression_ratio:>6g}")


if __name__ == "__main__":
    run_cli(main)
