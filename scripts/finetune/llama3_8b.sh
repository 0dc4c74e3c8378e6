#!/usr/bin/env bash
# Finetune a TOPA checkpoint (pre-aligned on TextVid) on NExT-QA / STAR / TVQA, Llama-3 8B.
# Published recipe per dataset (the original scripts), 4 GPUs x batch 20 x accum 4, 5 epochs:
#   nextqa  blr 1e-2, warmup 1 epoch
#   star    blr 1e-2, warmup 1 epoch
#   tvqa    blr 5e-3, warmup 1 epoch
# DATASET=nextqa (default), star or tvqa picks the dataset and its recipe. The original recipe has no flipped
# losses; FLIPPED="--vaq --qav" adds them (docs/training.md). Validation accuracy after every epoch picks
# checkpoint_best.pth.
# --finetune loads the checkpoint's TOPA weights only (fresh optimizer and schedule, epoch 0).
# Usage (from the repository root): [DATASET=star] bash scripts/finetune/llama3_8b.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
LLAMA=llama3_8b
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- editable (or set in the environment) ----
DATASET=${DATASET:-nextqa}
LLAMA_PATH=${LLAMA_PATH:-./pretrained/llama3/}
DATA_ROOT=${DATA_ROOT:-./data}
RESUME=${RESUME:-./vqa_checkpoint/checkpoint_pretrain/llama3_8b/checkpoint_19.pth}  # the pre-alignment's last epoch
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/checkpoint_finetune/llama3_8b_${DATASET}}
BATCH=${BATCH:-20}
ACCUM=${ACCUM:-4}
EPOCHS=${EPOCHS:-5}
FLIPPED=${FLIPPED:-}
case "$DATASET" in
  nextqa) BLR=${BLR:-1e-2}; WARMUP=${WARMUP:-1} ;;
  star) BLR=${BLR:-1e-2}; WARMUP=${WARMUP:-1} ;;
  tvqa) BLR=${BLR:-5e-3}; WARMUP=${WARMUP:-1} ;;
  *) echo "DATASET=$DATASET: expected nextqa, star or tvqa" >&2; exit 2 ;;
esac
# -----------------------------------------------

# shellcheck disable=SC2086  # FLIPPED holds zero or more flags
$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --llama_model_path "$LLAMA_PATH" --data_root "$DATA_ROOT" \
  --dataset "$DATASET" --finetune --resume "$RESUME" $FLIPPED \
  --max_seq_len 128 --max_feats 10 --adapter_len 50 --bias 3.5 --tau 100 \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs "$WARMUP" \
  --blr "$BLR" --weight_decay 0.1 \
  --eval_datasets "$DATASET" \
  --output_dir "$OUTPUT_DIR" "$@"
