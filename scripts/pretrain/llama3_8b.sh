#!/usr/bin/env bash
# TOPA text-only pre-alignment on TextVid, Llama-3 8B: the published recipe (docs/training.md):
# 20 epochs, warmup 1, blr 5e-3, wd 0.1, max_seq_len 150, bias 3.5, 4 GPUs x batch 14 x accum 8.
# RoPE theta is 10000 (scripts/common.sh), as the original code used, so runs reproduce the released
# Llama-3 checkpoints; append `--rope_theta 500000` to use params.json's value instead.
# Usage (from the repository root): bash scripts/pretrain/llama3_8b.sh [extra train.py args]
# Launcher: scripts/common.sh (NPROC processes, default 4 here; TORCHRUN=python for one plain process).
set -euo pipefail
LLAMA=llama3_8b
NPROC=${NPROC:-4}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- editable (or set in the environment) ----
LLAMA_PATH=${LLAMA_PATH:-./pretrained/llama3/}
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/checkpoint_pretrain/llama3_8b}
BATCH=${BATCH:-14}
ACCUM=${ACCUM:-8}
BLR=${BLR:-5e-3}
EPOCHS=${EPOCHS:-20}
EVAL_DATASETS=${EVAL_DATASETS:-none}  # e.g. "egos": zero-shot EgoSchema val (with --memory) after each epoch
# -----------------------------------------------
# (The original script's --vaq is left out on purpose: see scripts/pretrain/llama2_7b.sh.)

$TORCHRUN "$REPO/train.py" "${MODEL_ARGS[@]}" --llama_model_path "$LLAMA_PATH" --data_root "$DATA_ROOT" \
  --textvid --video_caption --openvqa --answer_balance --variance 0.0 \
  --max_seq_len 150 --max_feats 10 --adapter_len 50 --bias 3.5 --tau 100 \
  --batch_size "$BATCH" --accum_iter "$ACCUM" --epochs "$EPOCHS" --warmup_epochs 1 \
  --blr "$BLR" --weight_decay 0.1 \
  --eval_datasets "$EVAL_DATASETS" --memory \
  --output_dir "$OUTPUT_DIR" "$@"
