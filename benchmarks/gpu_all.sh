#!/usr/bin/env bash
# Every GPU measurement in one run, for the `device` machine (Python 3.12, torch + CUDA, no
# deepspeed / megatron-core, no network). Prepare on this machine, then run there:
#
#   bash benchmarks/gpu_all.sh --prepare      # here: wheels into .gpu-wheels/ (git-ignored)
#   run(command="bash benchmarks/gpu_all.sh", carry=[".gpu-wheels", "data/tokenizer",
#       "data/sotu_train.bin", "data/sotu_train.idx", "data/sotu_train.json"], timeout_s=540)
#
# Writes each benchmark's output to $OUT (default ./gpu-results): MFU of the 0.6b and 1.7b presets
# (bf16, one GPU), the VIST2 attention against causal at 8K tokens (8b shapes), the planner's
# memory estimate against measured peak memory, and the inference benchmark at the 8b preset's
# shapes (random weights: cost, not quality). Record the numbers with the device name in
# docs/performance.md and docs/scaling.md.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu-wheels
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-wheels \
    megatron-core==0.16.1 hjson pydantic pydantic-core annotated-types typing-inspection ninja py-cpuinfo
  pip wheel -q --no-deps -w .gpu-wheels "deepspeed==0.19.8"
  ls .gpu-wheels
  exit 0
fi
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD"
pip list 2>/dev/null | grep -i -E "^(torch|transformers|deepspeed|megatron)" > "$OUT/pip.txt"
python3 -m pip install -q --no-deps --no-index .gpu-wheels/*.whl 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt"
run() {      # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "exit $?" >> "$OUT/$name.txt"
  tail -8 "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}
run attention-8k 120 python3 benchmarks/attention_cost.py --preset 8b --seq 8192
run mfu-0.6b 150 python3 benchmarks/mfu.py --preset 0.6b --steps 8
run mfu-1.7b 150 python3 benchmarks/mfu.py --preset 1.7b --steps 8 train.activation_checkpointing=selective
run memory-estimate 120 python3 benchmarks/memory_estimate.py --only "1 rank, ZeRO-1"
run inference-8b 120 python3 benchmarks/inference.py --preset 8b --lengths 2048,8192 --gen 64 --write-prompts 0 --out "$OUT"
