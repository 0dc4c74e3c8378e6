#!/usr/bin/env bash
# Baseline: the same supervised training without TextVid pre-alignment (fresh TOPA parameters), Llama-3 8B.
# Published recipe per dataset (the original scripts), 4 GPUs x batch 20 x accum 4, 10 epochs:
#   nextqa  blr 2e-2, warmup 2 epochs
#   star    blr 2e-2, warmup 2 epochs
#   tvqa    blr 1e-2, warmup 2 epochs
# DATASET=nextqa (default), star or tvqa picks the dataset and its recipe. The original recipe has no flipped
# losses; FLIPPED="--vaq --qav" adds them (docs/training.md). Validation accuracy after every epoch picks
# checkpoint_best.pth.
# Usage (from the repository root): [DATASET=star] bash scripts/baseline/llama3_8b.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
LLAMA=llama3_8b
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- editable (or set in the environment) ----
DATASET=${DATASET:-nextqa}
LLAMA_PATH=${LLAMA_PATH:-./pretrained/llama3/}
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/baseline/llama3_8b_${DATASET}}
BATCH=${BATCH:-20}
ACCUM=${ACCUM:-4}
EPOCHS=${EPOCHS:-10}
FLIPPED=${FLIPPED:-}
case "$DATASET" in
  nextqa) BLR=${BLR:-2e-2}; WARMUP=${WARMUP:-2} ;;
  star) BLR=${BLR:-2e-2}; WARMUP=${WARMUP:-2} ;;
  tvqa) BLR=${BLR:-1e-2}; WARMUP=${WARMUP:-2} ;;
  *) echo "DATASET=$DATASET: expected nextqa, star or tvqa" >&2; exit 2 ;;
esac
# -----------------------------------------------

# shellcheck disable=SC2086  # FLIPPED holds zero or more flags
$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --llama_model_path "$LLAMA_PATH" --data_root "$DATA_ROOT" \
  --dataset "$DATASET" $FLIPPED \
  --max_seq_len 128 --max_feats 10 --adapter_len 50 --bias 3.5 --tau 100 \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs "$WARMUP" \
  --blr "$BLR" --weight_decay 0.1 \
  --eval_datasets "$DATASET" \
  --output_dir "$OUTPUT_DIR" "$@"
