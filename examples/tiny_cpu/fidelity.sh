#!/usr/bin/env bash
# The fidelity study in one command (docs/fidelity.md): train the VIST2 model at rho 2, 4 and 8,
# a read-back curriculum variant at rho 4, and the text and window controls on the same tokens
# and steps; evaluate them all with tools/evaluate.py; write docs/fidelity.md with its plots.
#
#   bash examples/tiny_cpu/fidelity.sh                       # the CPU study (2 cores, < 1 hour)
#   STEPS=4 EVAL_BATCHES=1 OCR_CHUNKS=4 bash examples/tiny_cpu/fidelity.sh     # a smoke run
#   PRESET=0.6b LAUNCH="torchrun --nproc_per_node 8 --no-python ./launch.sh" STEPS=20000 \
#     EVAL_LAUNCH="torchrun --nproc_per_node 1" bash examples/tiny_cpu/fidelity.sh   # GPUs
#
# Settings (environment): PRESET, STEPS, OUT (runs go to OUT/<name>), LAUNCH (trainer launcher),
# EVAL_LAUNCH (python, or a launcher running tools/evaluate.py), EXTRA (overrides for every run,
# e.g. data paths), READBACK (read-back share of the rho runs), RHO2_PRESET / RHO8_PRESET (the
# preset of the rho-2 / rho-8 runs), RHO2 / RHO4 / RHO8 (the model
# overrides giving each rho for the preset), EVAL_BATCHES, OCR_CHUNKS, RETRIEVAL_CONTEXTS,
# RETRIEVAL_DEPTHS, RETRIEVAL_TRIALS, LONG_DOCS, LONG_MAX_TOKENS, CER_CHUNKS, DOC (the page written), PREPARE (0: data exists),
# VARIANTS (more VIST2 runs at rho 4, "name=overrides;name=overrides", e.g. what limits the tiny models:
#   VARIANTS="vist2_rho4_readback50=data.readback_fraction=0.5;vist2_rho4_vit128=model.vision.hidden_size=128"),
# RECALL (1: every run trains on a blend with the recall-rich source, RECALL_SHARE of it, default 0.5,
#   and is evaluated on its held-out split: history worth clearly more than its error to the text
#   control; tools/make_recall_data.py makes it from RECALL_SOURCE, default data/sotu, with documents of
#   one PRESET row: at rho 2 a row holds one chunk less, so each document's last chunk starts a new
#   row without history; docs/evaluation.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
PRESET="${PRESET:-tiny-cpu}"
STEPS="${STEPS:-360}"
OUT="${OUT:-runs/fidelity}"
LAUNCH="${LAUNCH:-deepspeed --hostfile examples/tiny_cpu/hostfile --no_ssh_check --master_addr 127.0.0.1 --no_python ./launch.sh}"
EVAL_LAUNCH="${EVAL_LAUNCH:-python}"
EXTRA="${EXTRA:-}"
READBACK="${READBACK:-0.2}"
EVAL_BATCHES="${EVAL_BATCHES:-8}"
OCR_CHUNKS="${OCR_CHUNKS:-64}"
RETRIEVAL_CONTEXTS="${RETRIEVAL_CONTEXTS:-256,512}"
RETRIEVAL_DEPTHS="${RETRIEVAL_DEPTHS:-16,64,160}"
RETRIEVAL_TRIALS="${RETRIEVAL_TRIALS:-8}"
LONG_DOCS="${LONG_DOCS:-2}"
LONG_MAX_TOKENS="${LONG_MAX_TOKENS:-1024}"
CER_CHUNKS="${CER_CHUNKS:-8}"      # read-back CER logged at each training evaluation (VIST2 runs)
DOC="${DOC:-docs/fidelity.md}"
RECALL="${RECALL:-0}"
RECALL_SHARE="${RECALL_SHARE:-0.5}"
RECALL_SOURCE="${RECALL_SOURCE:-data/sotu}"
# rho = L / m with L fixed (the controls share the chunking): m follows the image size and the
# aligner's merge, never the glyph size (every rho renders legibly: docs/fidelity.md, "Stage 0").
# tiny-cpu: L = 32, 64 x 128 merge 2 -> m = 8 (rho 4); the presets tiny-cpu-rho2 (128 x 128,
# 9 pt, merge 2 -> 16) and tiny-cpu-rho8 (the same image, merge 4 -> 4).
# paper presets: L = 64, 128 x 128 merge 2 -> m = 16 (rho 4); 128 x 256 merge 2 -> 32 (rho 2);
# 128 x 256 merge 4 -> 8 (rho 8).
if [[ "$PRESET" == tiny-cpu ]]; then
  RHO2_PRESET="${RHO2_PRESET:-tiny-cpu-rho2}"
  RHO8_PRESET="${RHO8_PRESET:-tiny-cpu-rho8}"
  RHO2="${RHO2:-}"
  RHO4="${RHO4:-}"
  RHO8="${RHO8:-}"
else
  RHO2_PRESET="${RHO2_PRESET:-$PRESET}"
  RHO8_PRESET="${RHO8_PRESET:-$PRESET}"
  RHO2="${RHO2:-model.chunk.image_width=256 model.ocr_head.columns=64}"
  RHO4="${RHO4:-}"
  RHO8="${RHO8:-model.chunk.image_width=256 model.aligner.merge=4 model.ocr_head.columns=64}"
fi
declare -A RUN_PRESET=([vist2_rho2]="$RHO2_PRESET" [vist2_rho8]="$RHO8_PRESET")
HALF=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
if [[ "${PREPARE:-1}" == 1 && "$PRESET" == tiny-cpu ]]; then
  . examples/tiny_cpu/prepare_data.sh
fi
DATA_ARGS=()      # overrides with spaces (a blend): kept whole, unlike EXTRA
if [[ "$RECALL" == 1 ]]; then
  if [[ ! -f data/recall_train.json || ! -f data/recall_valid.json ]]; then
    python tools/make_recall_data.py --source "$RECALL_SOURCE" --output-prefix data/recall --preset "$PRESET"
  fi
  rest=$(python -c "print(round(1 - float('$RECALL_SHARE'), 6))")
  DATA_ARGS=("data.train_prefix=$rest ${RECALL_SOURCE}_train $RECALL_SHARE data/recall_train"
             "data.valid_prefix=data/recall_valid")
fi
start=$(date +%s)
mkdir -p "$OUT"

declare -a NAMES=(vist2_rho2 vist2_rho4 vist2_rho8 vist2_rho4_curriculum text window)
declare -A ARGS=(
  [vist2_rho2]="$RHO2 data.readback_fraction=$READBACK train.ocr_cer_chunks=$CER_CHUNKS"
  [vist2_rho4]="$RHO4 data.readback_fraction=$READBACK train.ocr_cer_chunks=$CER_CHUNKS"
  [vist2_rho8]="$RHO8 data.readback_fraction=$READBACK train.ocr_cer_chunks=$CER_CHUNKS"
  # read-back curriculum: half the chunks read back at first, then the rho runs' share
  [vist2_rho4_curriculum]="$RHO4 data.readback_schedule=[[0,0.5],[$HALF,$READBACK]] train.ocr_cer_chunks=$CER_CHUNKS"
  [text]="model.context=text"
  [window]="model.context=window"
)
IFS=';' read -ra VARIANT_LIST <<< "${VARIANTS:-}"
for v in "${VARIANT_LIST[@]}"; do
  [[ -n "$v" ]] || continue
  name="${v%%=*}"
  [[ "$name" == vist2_* && "$v" == *=* ]] || { echo "error: VARIANTS entry '$v': expected vist2_<name>=<overrides>" >&2; exit 2; }
  NAMES+=("$name")
  ARGS[$name]="$RHO4 data.readback_fraction=$READBACK train.ocr_cer_chunks=$CER_CHUNKS ${v#*=}"
done
# Read-back chunks shorten segments (n (L + m + 1) <= seq_length: at tiny-cpu's 272 tokens 6 chunks
# against the 7 of evaluation rows and the controls), so a VIST2 run that reads back gets the row
# length at which its segments are the evaluation rows' (docs/fidelity.md, "The read-back marker").
readback_rows() {   # <preset> <overrides...> -> data.seq_length=<tokens>, nothing without read-back
  python -c 'import sys
from megatron_vist2.config import load_config, reads_back
from megatron_vist2.data.packing import readback_seq_length
c = load_config(sys.argv[1], sys.argv[2:])
if reads_back(c):
    print(f"data.seq_length={readback_seq_length(c.data.seq_length, c.model.chunk.text_tokens, c.model.visual_tokens_per_chunk)}")' "$@"
}
for name in "${NAMES[@]}"; do
  [[ "$name" == vist2_* ]] || continue
  # shellcheck disable=SC2086
  ARGS[$name]+=" $(readback_rows "${RUN_PRESET[$name]:-$PRESET}" $EXTRA ${ARGS[$name]})"
done
for name in "${NAMES[@]}"; do
  run="$OUT/$name"
  if [[ -f "$run/summary.json" ]]; then
    echo "== $name: $run/summary.json exists, not retraining"
    continue
  fi
  echo "== training $name"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # the override lists are word lists
  $LAUNCH --preset "${RUN_PRESET[$name]:-$PRESET}" train.steps="$STEPS" train.eval_interval=0 checkpoint.save_interval=0 \
    logging.dir="$run" checkpoint.save_dir="$run/checkpoints" $EXTRA ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} ${ARGS[$name]}
  echo "$(( $(date +%s) - t0 ))" > "$run/train_seconds"
  echo "${ARGS[$name]}" > "$run/overrides"
done
for name in "${NAMES[@]}"; do
  [[ "$name" == vist2_* ]] || continue
  out="$OUT/$name/eval"
  if [[ -f "$out/eval.json" ]]; then
    echo "== $name: $out exists, not re-evaluating"
    continue
  fi
  echo "== evaluating $name"
  # shellcheck disable=SC2086
  $EVAL_LAUNCH tools/evaluate.py --checkpoint "$OUT/$name/checkpoints" --text "$OUT/text/checkpoints" \
    --window "$OUT/window/checkpoints" --out "$out" --batches "$EVAL_BATCHES" --ocr-chunks "$OCR_CHUNKS" \
    --retrieval-contexts "$RETRIEVAL_CONTEXTS" --retrieval-depths "$RETRIEVAL_DEPTHS" \
    --retrieval-trials "$RETRIEVAL_TRIALS" --long-docs "$LONG_DOCS" --long-max-tokens "$LONG_MAX_TOKENS" $EXTRA \
    ${DATA_ARGS[@]+"${DATA_ARGS[@]}"}
done
elapsed=$(( $(date +%s) - start ))
python examples/tiny_cpu/fidelity_report.py --runs "$OUT" --doc "$DOC" --steps "$STEPS" --preset "$PRESET" \
  --seconds "$elapsed" --command "$(printf '%q ' "$0") (PRESET=$PRESET STEPS=$STEPS READBACK=$READBACK EVAL_BATCHES=$EVAL_BATCHES OCR_CHUNKS=$OCR_CHUNKS RECALL=$RECALL)"
echo "fidelity study finished in ${elapsed}s: $DOC"
