#!/usr/bin/env bash
# TOPA text-only pre-alignment on TextVid with the published recipe (docs/training.md): 20 epochs, warmup 1,
# wd 0.1, max_seq_len 150, bias 3.5, adapters on every layer; batch, accumulation and blr per backbone. Every
# number comes from the table in llama/backbones.py (`python3 -m llama.backbones`; 4 GPUs).
# Usage (from the folder that holds pretrained/ and data/):
#   [LLAMA=llama2_7b|llama2_13b|llama3_8b|llama3_1_8b|llama3_2_3b|llama3_2_1b] bash scripts/pretrain.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
# The original script also passed --vaq: there it switched on the slot that carried the caption loss. Here
# caption batches need no flag, and --vaq would add a question-prediction loss the published checkpoints
# were not trained with, so it is left out.
set -euo pipefail
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---- editable (or set in the environment) ----
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/checkpoint_pretrain/$LLAMA}
BATCH=${BATCH:-$PRE_BATCH}
ACCUM=${ACCUM:-$PRE_ACCUM}
BLR=${BLR:-$PRE_BLR}
EPOCHS=${EPOCHS:-$PRE_EPOCHS}
EVAL_DATASETS=${EVAL_DATASETS:-none}  # e.g. "egos": zero-shot EgoSchema val (with --memory) after each epoch
# -----------------------------------------------

$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --data_root "$DATA_ROOT" \
  --textvid --video_caption --openvqa --answer_balance --variance "$VARIANCE" \
  --max_seq_len "$PRE_MAX_SEQ_LEN" --max_feats "$MAX_FEATS" --adapter_len "$ADAPTER_LEN" --adapter_layer "$LAYERS" \
  --bias "$BIAS" --tau "$TAU" \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs "$PRE_WARMUP" \
  --blr "$BLR" --weight_decay "$WEIGHT_DECAY" \
  --eval_datasets "$EVAL_DATASETS" --memory \
  --output_dir "$OUTPUT_DIR" "$@"
