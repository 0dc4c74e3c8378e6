#!/usr/bin/env bash
# Baseline: the finetuning of scripts/finetune.sh without TextVid pre-alignment (fresh TOPA parameters), with
# the published recipe (docs/training.md): 10 epochs, wd 0.1, max_seq_len 128; batch, accumulation, and the
# blr and warmup per dataset from the backbone's row in scripts/common.sh (4 GPUs). Validation accuracy after
# every epoch picks checkpoint_best.pth. The original recipe has no flipped losses; FLIPPED="--vaq --qav" adds them.
# Usage (from the folder that holds pretrained/ and data/):
#   [LLAMA=...] [DATASET=nextqa|star|tvqa] bash scripts/baseline.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---- editable (or set in the environment) ----
DATASET=${DATASET:-nextqa}
check_dataset
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/baseline/${LLAMA}_${DATASET}}
BATCH=${BATCH:-$BL_BATCH}
ACCUM=${ACCUM:-$BL_ACCUM}
BLR=${BLR:-$(dataset_value BL_BLR)}
WARMUP=${WARMUP:-$(dataset_value BL_WARMUP)}
EPOCHS=${EPOCHS:-10}
FLIPPED=${FLIPPED:-}
# -----------------------------------------------

# shellcheck disable=SC2086  # FLIPPED holds zero or more flags
$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --data_root "$DATA_ROOT" \
  --dataset "$DATASET" $FLIPPED \
  --max_seq_len 128 --max_feats 10 --adapter_len 50 --adapter_layer "$LAYERS" --bias 3.5 --tau 100 \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs "$WARMUP" \
  --blr "$BLR" --weight_decay 0.1 \
  --eval_datasets "$DATASET" \
  --output_dir "$OUTPUT_DIR" "$@"
