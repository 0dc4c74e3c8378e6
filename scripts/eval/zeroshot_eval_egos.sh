#!/usr/bin/env bash
# Zero-shot EgoSchema val subset (--test: full test set -> submission_egos_test.json) with a TOPA checkpoint.
# Run from the folder that holds pretrained/, data/ and vqa_checkpoint/:
#   bash scripts/eval/zeroshot_eval_egos.sh                       # Llama-2 7B, 1 GPU
#   LLAMA=llama2_13b NPROC=4 bash scripts/eval/zeroshot_eval_egos.sh --resume vqa_checkpoint/topa_13b.pth
#   LLAMA=llama3_8b bash scripts/eval/zeroshot_eval_egos.sh --resume vqa_checkpoint/topa_llama3_8b.pth
# Extra arguments are appended (later flags win).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
CKPT=${CKPT:-vqa_checkpoint/topa_${LLAMA}.pth}
OUT=${OUT:-results/zeroshot_egos/${LLAMA}}

$TORCHRUN "$REPO/eval.py" "${MODEL_ARGS[@]}" \
  --dataset egos --max_seq_len 600 --batch_size 10 --max_feats 10 --adapter_len 50 \
  --resume "$CKPT" --memory --output_dir "$OUT" "$@"
