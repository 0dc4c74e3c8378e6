#!/usr/bin/env bash
# Zero-shot TVQA val (add --sub for the subtitle prompt, with --max_seq_len 650) with a TOPA checkpoint.
# Run from the folder that holds pretrained/, data/ and vqa_checkpoint/:
#   bash scripts/eval/zeroshot_eval_tvqa.sh                       # Llama-2 7B, 1 GPU
#   LLAMA=llama2_13b NPROC=4 bash scripts/eval/zeroshot_eval_tvqa.sh --resume vqa_checkpoint/topa_13b.pth
#   LLAMA=llama3_8b bash scripts/eval/zeroshot_eval_tvqa.sh --resume vqa_checkpoint/topa_llama3_8b.pth
# Extra arguments are appended (later flags win).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
CKPT=${CKPT:-vqa_checkpoint/topa_${LLAMA}.pth}
OUT=${OUT:-results/zeroshot_tvqa/${LLAMA}}

$TORCHRUN "$REPO/eval.py" "${MODEL_ARGS[@]}" \
  --dataset tvqa --max_seq_len 150 --batch_size 10 --max_feats 10 --adapter_len 50 \
  --resume "$CKPT" --memory --output_dir "$OUT" "$@"
