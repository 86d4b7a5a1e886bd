"""Pretraining entry point.

    python -m megatron_vist2.train --preset tiny-cpu train.steps=100 optim.lr=1e-3

Under a launcher (torchrun, ``deepspeed``, ``launch.sh``) every rank runs this. Order matters:
the config and every input file are checked before any process group or model is built.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from .config import Config, ConfigError, config_to_dict, load_config, reads_back, tokenizer_size_problem, validate
from .errors import TrainingError, run_cli


def preflight(cfg: Config) -> None:
    """Input checks that need files, not processes: tokenizer, datasets, checkpoint dirs."""
    from .cost.planner import available_memory_bytes, memory_problem
    from .data.dataset import parse_blend
    from .data.indexed import open_indexed
    from .data.tokenizer import load_tokenizer
    from .checkpoint.manager import CheckpointManager
    from .config.validate import check_dir_writable

    problem = memory_problem(cfg, int(os.environ.get("WORLD_SIZE", "1")), available_memory_bytes(_device()))
    if problem:                                 # before any file is read or process started
        raise ConfigError(problem)
    tok = load_tokenizer(cfg.data.tokenizer)
    problem = tokenizer_size_problem(cfg, tok.vocab_size, cfg.data.tokenizer)
    if problem:
        raise ConfigError(problem)
    for spec in (cfg.data.train_prefix, cfg.data.valid_prefix):
        for _, prefix in parse_blend(spec):
            docs = open_indexed(prefix, tok)
            if spec == cfg.data.valid_prefix:  # a sample the font must draw (checked once)
                from .data.font_coverage import warn_missing_glyphs
                warn_missing_glyphs(cfg.model.render, (tok.decode(docs.tokens(d)) for d in range(min(32, len(docs)))),
                                    f"the first documents of {prefix}")
    from .data.ocr_targets import grid_problem
    problem = grid_problem(cfg.model)          # the OCR head's grid must hold every rendering
    if problem:
        raise ConfigError(problem)
    from .data.cursor import ReadingCursor
    ReadingCursor.of_model(cfg.model)          # the reading cursor needs a font of one advance
    CheckpointManager.preflight(cfg, tok)   # where it starts; never over a complete checkpoint
    check_dir_writable(cfg.logging.dir, "logging.dir")
    from .training.logger import wandb_dir
    if wandb_dir(cfg) is not None:
        check_dir_writable(*wandb_dir(cfg))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain a VIST2 model.")
    ap.add_argument("--preset", default="tiny-cpu", help="preset name or YAML file")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(cfg, world_size)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return
    from .parallel.distributed import gpu_environment, init_distributed, shutdown
    for name, value in gpu_environment(cfg.parallel.tensor_parallel).items():
        os.environ.setdefault(name, value)     # before anything starts CUDA or NCCL
    preflight(cfg)

    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _cuda() else "cuda")
    from .training.health import did_not_train
    from .training.trainer import train
    env = init_distributed(cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel)
    _set_cpu_threads(env)
    result = train(cfg, env)
    if env.is_main:
        first = sum(result.train_losses[:10]) / max(1, len(result.train_losses[:10]))
        last = sum(result.train_losses[-10:]) / max(1, len(result.train_losses[-10:]))
        drop = 100.0 * (1.0 - result.eval_after / result.eval_before) if result.eval_before else float("nan")
        summary = {
            "steps": result.steps, "finished": result.steps >= cfg.train.steps,
            "consumed_samples": result.consumed_samples,
            "train_loss_first10": first, "train_loss_last10": last,
            "eval_loss_before": result.eval_before, "eval_loss_after": result.eval_after,
            "eval_loss_drop_percent": drop, "tokens_per_second": result.tokens_per_second,
            "tensorboard": str(Path(cfg.logging.dir) / "tensorboard"), "checkpoint": result.checkpoint,
            "ocr_readback_accuracy": result.ocr_accuracy, "skipped_steps": result.skipped_steps,
            "ocr_char_accuracy": result.ocr_char_accuracy, "ocr_blind_char_accuracy": result.ocr_blind_accuracy,
        }
        if result.front is not None:
            summary["front"] = {k: v for k, v in result.front.items() if k != "examples"}
        Path(cfg.logging.dir, "summary.json").write_text(json.dumps(summary, indent=1))
        print("\n=== summary ===")
        print(f"train loss      {first:.4f} (first 10 steps) -> {last:.4f} (last 10 steps)")
        print(f"held-out loss   {result.eval_before:.4f} -> {result.eval_after:.4f} ({drop:.1f} % lower)")
        if result.front is not None:
            print(f"front (OCR head) held-out character accuracy {result.front['char_accuracy']:.1%} "
                  f"(blind {result.front.get('blind', {}).get('char_accuracy', float('nan')):.1%}; "
                  f"{result.front['chunks']} chunks, 1 - CER)")
        if result.ocr_accuracy is not None:
            print(f"OCR read-back   {result.ocr_accuracy:.1%} of read-back text tokens predicted "
                  f"(chance {1 / cfg.model.llm.vocab_size:.2%})")
        if result.ocr_char_accuracy is not None:
            blind = "n/a" if result.ocr_blind_accuracy is None else f"{result.ocr_blind_accuracy:.1%}"
            print(f"OCR read-back   held-out character accuracy {result.ocr_char_accuracy:.1%} (blind {blind}: "
                  f"read from other chunks' images), {cfg.train.ocr_cer_chunks} chunks read greedily")
            if not reads_back(cfg):
                print("                (this run trained no read-back chunks (data.readback_fraction): its read-back "
                      "starts from an\n                untrained marker, so both scores say only that it does not "
                      "read; examples/tiny_cpu/stages.sh\n                trains a model that does)")
        print(f"throughput      {result.tokens_per_second:,.0f} tokens/s (text + visual, all ranks)")
        print(f"tensorboard     tensorboard --logdir {summary['tensorboard']}")
        print(f"checkpoint      {result.checkpoint}")
        if result.skipped_steps:
            print(f"skipped steps   {result.skipped_steps} of the {len(result.train_losses)} this run ran "
                  f"(non-finite loss or gradient: not applied)")
    shutdown()
    failed = did_not_train(result.skipped_steps, len(result.train_losses))
    if failed:                                  # every rank: the counts are the same everywhere
        raise TrainingError(failed)


def _device():
    import torch
    if torch.cuda.is_available():
        from .parallel.distributed import local_cuda_device
        return local_cuda_device()
    return torch.device("cpu")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _set_cpu_threads(env) -> None:
    """On the CPU, share the cores between the ranks on this host (torchrun does 1 each)."""
    import torch
    if env.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", env.world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


if __name__ == "__main__":
    run_cli(main)
