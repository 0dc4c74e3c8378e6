#!/usr/bin/env bash
# Zero-shot MVBench (20 tasks) by generation, the published protocol (docs/evaluation.md).
# Run from the folder that holds pretrained/, data/ and vqa_checkpoint/:
#   bash scripts/eval/zeroshot_eval_mvbench.sh                       # Llama-2 7B, 1 GPU
#   LLAMA=llama2_13b NPROC=4 bash scripts/eval/zeroshot_eval_mvbench.sh --resume vqa_checkpoint/topa_13b.pth
# Extra arguments are appended (later flags win).
# --letter_constrained adds the argmax over the valid letters beside the published check.
set -euo pipefail
source "$(dirname "$0")/../common.sh"
CKPT=${CKPT:-vqa_checkpoint/topa_${LLAMA}.pth}
OUT=${OUT:-results/zeroshot_mvbench/${LLAMA}}

$TORCHRUN "$REPO/eval.py" "${MODEL_ARGS[@]}" \
  --dataset mvbench --batch_size 16 --max_feats 10 --adapter_len 50 \
  --resume "$CKPT" --output_dir "$OUT" "$@"  # memory: the protocol's (on); --no_memory turns it off
