#!/usr/bin/env bash
# The VIST2 recipe's stages at tiny scale, on 2 CPU ranks, each stage starting from the previous
# stage's weights (checkpoint.init_from): 0 teaching the front to read, 1a teaching the decoder to
# read, 1 optical LM pretraining, 2 instruction tuning (hours on 2 cores: stage 0 and 1a take most;
# docs/training.md). Stage configs: examples/tiny_cpu/stages/*.yaml. Rerunning continues
# where it stopped (each stage auto-resumes from its own checkpoints). Extra arguments are
# overrides for every stage, e.g.  bash examples/tiny_cpu/stages.sh train.steps=20
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/setup_env.sh
export DS_ACCELERATOR=cpu
start=$(date +%s)
. examples/tiny_cpu/prepare_data.sh
if [[ ! -f data/sotu_instructions_train.json ]]; then
  python examples/tiny_cpu/make_instructions.py data/sotu_instructions.jsonl
  python tools/preprocess_data.py --instruction data/sotu_instructions.jsonl \
    --tokenizer data/tokenizer/sotu.model --output-prefix data/sotu_instructions
fi
for stage in stage0_ocr_warmup stage1_readback stage1_pretrain stage2_instructions; do
  echo "=== $stage ==="
  deepspeed --hostfile examples/tiny_cpu/hostfile --no_ssh_check --master_addr 127.0.0.1 \
    --no_python ./launch.sh --preset "examples/tiny_cpu/stages/$stage.yaml" "$@"
done
echo "four stages finished in $(( $(date +%s) - start ))s"
