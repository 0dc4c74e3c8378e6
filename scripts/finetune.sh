#!/usr/bin/env bash
# Finetune a TOPA checkpoint (pre-aligned on TextVid) on NExT-QA / STAR / TVQA with the published recipe
# (docs/training.md): 5 epochs, warmup 1, wd 0.1, max_seq_len 128, bias 3.5; batch, accumulation and the blr
# per dataset. Every number comes from the table in llama/backbones.py (`python3 -m llama.backbones`; 4 GPUs).
# Validation accuracy after every epoch picks checkpoint_best.pth. --finetune loads the checkpoint's TOPA weights only (fresh optimizer and schedule).
# scripts/baseline.sh runs this script with TOPA_JOB=baseline: the same training from fresh TOPA parameters
# (10 epochs, its own batch, blr and warmup per dataset).
# The original recipe has no flipped losses; FLIPPED="--vaq --qav" adds them.
# Usage (from the folder that holds pretrained/, data/ and vqa_checkpoint/):
#   [LLAMA=...] [DATASET=nextqa|star|tvqa] [RESUME=ckpt] bash scripts/finetune.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOPA_JOB=${TOPA_JOB:-finetune}

# ---- editable (or set in the environment) ----
DATASET=${DATASET:-nextqa}
check_dataset
DATA_ROOT=${DATA_ROOT:-./data}
FLIPPED=${FLIPPED:-}
if [ "$TOPA_JOB" = baseline ]; then
  START=()
  OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/baseline/${LLAMA}_${DATASET}}
  BATCH=${BATCH:-$BL_BATCH}
  ACCUM=${ACCUM:-$BL_ACCUM}
  BLR=${BLR:-$(dataset_value BL_BLR)}
  WARMUP=${WARMUP:-$(dataset_value BL_WARMUP)}
  EPOCHS=${EPOCHS:-$BL_EPOCHS}
  MAX_SEQ_LEN=$BL_MAX_SEQ_LEN
else
  RESUME=${RESUME:-./vqa_checkpoint/checkpoint_pretrain/$LLAMA/checkpoint_19.pth}  # the pre-alignment's last epoch
  START=(--finetune --resume "$RESUME")
  OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/checkpoint_finetune/${LLAMA}_${DATASET}}
  BATCH=${BATCH:-$FT_BATCH}
  ACCUM=${ACCUM:-$FT_ACCUM}
  BLR=${BLR:-$(dataset_value FT_BLR)}
  WARMUP=${WARMUP:-$(dataset_value FT_WARMUP)}
  EPOCHS=${EPOCHS:-$FT_EPOCHS}
  MAX_SEQ_LEN=$FT_MAX_SEQ_LEN
fi
# -----------------------------------------------

# shellcheck disable=SC2086  # FLIPPED holds zero or more flags
$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --data_root "$DATA_ROOT" \
  --dataset "$DATASET" "${START[@]}" $FLIPPED \
  --max_seq_len "$MAX_SEQ_LEN" --max_feats "$MAX_FEATS" --adapter_len "$ADAPTER_LEN" --adapter_layer "$LAYERS" \
  --bias "$BIAS" --tau "$TAU" \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs "$WARMUP" \
  --blr "$BLR" --weight_decay "$WEIGHT_DECAY" \
  --eval_datasets "$DATASET" \
  --output_dir "$OUTPUT_DIR" "$@"
