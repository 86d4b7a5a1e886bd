"""4-rank worker for test_evaluate.py (TP 2 x PP 2): read a consolidated checkpoint into a
TP2/PP2/ZeRO-3 engine and save it in that layout (the layout a cluster run leaves), then run the
evaluation with TP and PP ranks on both checkpoints, and with TP2 alone (PP 1: the engine's measures,
OCR read-back, retrieval and long documents, run on TP ranks); rank 0 writes the results."""
import json
import sys
from pathlib import Path

import yaml


# the engine's measures, small (test_evaluate.py runs the same in one process)
ENGINE = dict(batches=1, micro_batch=4, ocr_chunks=3, retrieval_contexts=(192,), retrieval_depths=(16, 64),
              retrieval_trials=2, long_docs=1, long_max_tokens=480)


def main(ckpt, out, valid):
    from megatron_vist2.config import apply_overrides, config_from_dict, validate
    from megatron_vist2.evaluation.runner import Options, run
    from megatron_vist2.parallel.distributed import init_distributed
    from megatron_vist2.checkpoint.format import read_manifest, resolve_tag_dir
    from megatron_vist2.checkpoint.resume import load_checkpoint
    from megatron_vist2.checkpoint.save import save_checkpoint
    from megatron_vist2.training.trainer import build_model, make_engine
    env = init_distributed(2, 2)
    step_dir = resolve_tag_dir(ckpt)
    saved = yaml.safe_load((step_dir / "config.yaml").read_text())
    cfg = validate(config_from_dict(apply_overrides(saved, [
        "parallel.tensor_parallel=2", "parallel.pipeline_parallel=2", "parallel.zero_stage=3",
        "parallel.micro_batch_size=4", "parallel.global_batch_size=4", f"checkpoint.save_dir={out}/tp2pp2z3"])), 4)
    engine = make_engine(cfg, env, build_model(cfg, env))
    load_checkpoint(engine, cfg, ckpt, weights_only=True)
    save_checkpoint(engine, cfg, 2, 0, read_manifest(step_dir)["tokenizer_sha256"], print)
    del engine
    results = {}
    for name, path in (("consolidated", ckpt), ("tp2pp2z3", f"{out}/tp2pp2z3")):
        results[name] = run(Options(checkpoint=path, tp=2, pp=2, batches=2, micro_batch=4, ocr_chunks=0,
                                    long_docs=0, valid_prefix=valid))
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(2, 1, create_gloo_process_groups=False)
    results["tp2_engine"] = run(Options(checkpoint=f"{out}/tp2pp2z3", tp=2, **ENGINE, valid_prefix=valid))
    if env.rank == 0:
        Path(out, "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
