#!/usr/bin/env bash
# TOPA text-only pre-alignment on TextVid, Llama-2 13B: the published recipe (docs/training.md):
# 20 epochs, warmup 1, blr 8e-3, wd 0.1, max_seq_len 150, bias 3.5, 4 GPUs x batch 4 x accum 8,
# adapters on all 40 layers.
# Usage (from the repository root): bash scripts/pretrain/llama2_13b.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
LLAMA=llama2_13b
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- editable (or set in the environment) ----
LLAMA_PATH=${LLAMA_PATH:-./pretrained/llama2/}
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/checkpoint_pretrain/llama2_13b}
BATCH=${BATCH:-4}
ACCUM=${ACCUM:-8}
BLR=${BLR:-8e-3}
EPOCHS=${EPOCHS:-20}
EVAL_DATASETS=${EVAL_DATASETS:-none}  # e.g. "egos": zero-shot EgoSchema val (with --memory) after each epoch
# -----------------------------------------------
# (The original script's --vaq is left out on purpose: see scripts/pretrain/llama2_7b.sh.)

$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --llama_model_path "$LLAMA_PATH" --data_root "$DATA_ROOT" \
  --textvid --video_caption --openvqa --answer_balance --variance 0.0 \
  --max_seq_len 150 --max_feats 10 --adapter_len 50 --adapter_layer 40 --bias 3.5 --tau 100 \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs 1 \
  --blr "$BLR" --weight_decay 0.1 \
  --eval_datasets "$EVAL_DATASETS" --memory \
  --output_dir "$OUTPUT_DIR" "$@"
