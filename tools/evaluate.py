#!/usr/bin/env python3
"""Evaluate a checkpoint (any layout, consolidated or not): held-out loss and perplexity on
identical targets, history retention R against the text and window controls, OCR read-back,
retrieval from compressed history and loss beyond the training length (docs/fidelity.md).

    python tools/evaluate.py --checkpoint runs/vist2/checkpoints --text runs/text/checkpoints \
        --window runs/window/checkpoints --out runs/vist2/eval
    torchrun --nproc_per_node 2 --no-python ./launch.sh ... (see docs/fidelity.md): the same
        flags with --tp/--pp; the remaining ranks are data-parallel

Writes OUT/eval.json, OUT/*.png and OUT/tensorboard (OUT must not exist yet) and prints a table.
"""
import argparse
import os

from megatron_vist2.errors import run_cli


def ints(text: str):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the model: a checkpoint dir (with 'latest') or a step dir")
    ap.add_argument("--text", help="the text control (model.context=text) trained on the same tokens")
    ap.add_argument("--window", help="the window control (model.context=window) trained on the same tokens")
    ap.add_argument("--out", required=True, help="output directory (created; must not exist)")
    ap.add_argument("--valid-prefix", default="", help="held-out data (default: the model's data.valid_prefix)")
    ap.add_argument("--batches", type=int, default=4, help="global batches of held-out rows (all different: a "
                    "held-out set that would repeat rows is refused, with the largest value that fits)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (under a launcher)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages (under a launcher; engine metrics need 1)")
    ap.add_argument("--ocr-chunks", type=int, default=32, help="held-out chunks read back (0: none)")
    ap.add_argument("--retrieval-contexts", type=ints, default=[], help="context lengths in tokens, e.g. 512,1024")
    ap.add_argument("--retrieval-depths", type=ints, default=[], help="tokens between the key and the question")
    ap.add_argument("--retrieval-trials", type=int, default=4)
    ap.add_argument("--long-docs", type=int, default=2, help="held-out documents longer than a row (0: none)")
    ap.add_argument("--long-max-tokens", type=int, default=2048)
    ap.add_argument("--no-tensorboard", action="store_true")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides applied to every checkpoint's config")
    args = ap.parse_args(argv)
    for flag in ("batches", "micro_batch", "tp", "pp", "retrieval_trials"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("ocr_chunks", "long_docs", "long_max_tokens"):
        if getattr(args, flag) < 0:
            ap.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if bool(args.retrieval_contexts) != bool(args.retrieval_depths):
        ap.error("--retrieval-contexts and --retrieval-depths go together")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from megatron_vist2.evaluation import report
    from megatron_vist2.evaluation.runner import Options, run
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        report.check_output_dir(args.out)
    opts = Options(checkpoint=args.checkpoint, text=args.text, window=args.window, batches=args.batches,
                   micro_batch=args.micro_batch, tp=args.tp, pp=args.pp, valid_prefix=args.valid_prefix,
                   ocr_chunks=args.ocr_chunks, retrieval_contexts=args.retrieval_contexts,
                   retrieval_depths=args.retrieval_depths, retrieval_trials=args.retrieval_trials,
                   long_docs=args.long_docs, long_max_tokens=args.long_max_tokens, overrides=args.overrides)
    results = run(opts)
    if main_rank:
        out = report.write(results, args.out, tensorboard=not args.no_tensorboard)
        print(report.table(results))
        print(f"wrote {out}/eval.json")
    from megatron_vist2.parallel.distributed import shutdown
    shutdown()


if __name__ == "__main__":
    run_cli(main)
