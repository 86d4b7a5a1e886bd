#!/usr/bin/env bash
# Every GPU measurement in one run, for the `device` machine (Python 3.12, torch + CUDA, no
# deepspeed / megatron-core, no network). Prepare on this machine, then run there:
#
#   bash benchmarks/gpu_all.sh --prepare      # here: wheels into .gpu-wheels/ (git-ignored)
#   run(command="bash benchmarks/gpu_all.sh", carry=[".gpu-wheels", "data/tokenizer",
#       "data/sotu_train.bin", "data/sotu_train.idx", "data/sotu_train.json"], timeout_s=540)
#
# First a smoke run of the whole path on one GPU under NCCL, bf16 (train 2 steps with an
# evaluation and a save after each step, export the backbone and the whole model, generate in
# both modes); it stops the script (exit 1, summary.txt says which part) before any benchmark
# if a part fails. Then writes each benchmark's output to $OUT (default ./gpu-results): MFU of the 0.6b and 1.7b presets
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
# ---- smoke: training, evaluation, export and generation on one GPU (NCCL, bf16), 2 steps
SMOKE="$OUT/smoke"
rm -rf "$SMOKE"
smoke() {    # name, timeout seconds, command...: as run(), but a failure ends the script
  local name=$1 limit=$2; shift 2
  echo "== smoke-$name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" > "$OUT/smoke-$name.txt" 2>&1
  local code=$?
  echo "exit $code" >> "$OUT/smoke-$name.txt"
  tail -4 "$OUT/smoke-$name.txt" | tee -a "$OUT/summary.txt"
  if [[ $code -ne 0 ]]; then
    echo "smoke-$name failed (exit $code): no benchmark run; see $OUT/smoke-$name.txt" | tee -a "$OUT/summary.txt"
    exit 1
  fi
}
smoke train 300 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m megatron_vist2.train \
  --preset tiny-cpu train.steps=2 train.dtype=bf16 train.log_interval=1 train.eval_interval=1 \
  train.eval_batches=1 data.num_workers=0 data.valid_prefix=data/sotu_train \
  checkpoint.save_interval=1 logging.dir="$SMOKE" checkpoint.save_dir="$SMOKE/ckpt"
smoke checkpoint 10 test -f "$SMOKE/ckpt/step_0000002/complete.json"
smoke evaluated 10 grep -q '"eval_loss_after"' "$SMOKE/summary.json"
smoke export 120 python3 tools/convert_checkpoint.py --checkpoint "$SMOKE/ckpt" --out "$SMOKE/hf"
smoke export-vist2 120 python3 tools/convert_checkpoint.py --checkpoint "$SMOKE/ckpt" --out "$SMOKE/hf-vist2" --vist2
smoke generate 120 python3 -m megatron_vist2.generate --checkpoint "$SMOKE/ckpt" \
  --prompt "Fellow citizens of the Senate and of the House of Representatives" --max-new-tokens 8
smoke generate-baseline 120 python3 -m megatron_vist2.generate --checkpoint "$SMOKE/ckpt" \
  --prompt "Fellow citizens" --max-new-tokens 8 --baseline

# ---- benchmarks
run attention-8k 120 python3 benchmarks/attention_cost.py --preset 8b --seq 8192
run mfu-0.6b 150 python3 benchmarks/mfu.py --preset 0.6b --steps 8
run mfu-1.7b 150 python3 benchmarks/mfu.py --preset 1.7b --steps 8 train.activation_checkpointing=selective
run memory-estimate 120 python3 benchmarks/memory_estimate.py --only "1 rank, ZeRO-1"
run inference-8b 120 python3 benchmarks/inference.py --preset 8b --lengths 2048,8192 --gen 64 --write-prompts 0 --no-plot --out "$OUT"
