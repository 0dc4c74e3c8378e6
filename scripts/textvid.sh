#!/usr/bin/env bash
# Your own TextVid, end to end (docs/textvid.md): an LLM writes tideos from your seed captions, CLIP's text
# encoder encodes their frames, the frame texts become the text memory, TOPA pre-aligns on them
# (scripts/pretrain.sh: the published recipe) and is evaluated zero-shot (scripts/eval/).
# Usage (from the folder that holds pretrained/ and data/):
#   SEEDS=captions.txt NAME=surgery WRITER="--hf_model ./Qwen2.5-7B-Instruct" bash scripts/textvid.sh
#   SEEDS=captions.jsonl NAME=surgery WRITER="--base_url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \
#     --concurrency 32" EVAL_DATASET=egos bash scripts/textvid.sh
# Environment:
#   SEEDS, WRITER   the seed captions (.txt or .jsonl) and the writer flags of textvid.generate (required)
#   NAME            the domain: tideos, features and memory go to $DOMAIN_ROOT (default data/textvid_<NAME>),
#                   checkpoints to $OUTPUT_DIR (default vqa_checkpoint/textvid_<NAME>/<LLAMA>)
#   GEN_ARGS        more textvid.generate flags, e.g. "--frames 5-15 --per_seed 2"
#   CLIP            CLIP ViT-L/14 in Hugging Face format for extract_features.py (default: its own default)
#   EVAL_DATASET    the zero-shot benchmark under DATA_ROOT (default ./data): egos (default), nextqa, star,
#                   tvqa, mvbench, msrvtt, vatex; none skips it. EVAL_ARGS: more eval.py flags
#   LLAMA, LLAMA_PATH, NPROC, TORCHRUN, EPOCHS, BATCH, ...: as for scripts/pretrain.sh and scripts/eval/
# Extra arguments go to train.py (later flags win). Every step resumes when the script is run again.
set -euo pipefail
NPROC=${NPROC:-1}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${SEEDS:?set SEEDS to the seed captions (.txt or .jsonl)}"
: "${WRITER:?set WRITER to --hf_model DIR, or to --base_url URL --model NAME}"
NAME=${NAME:-mine}
DOMAIN_ROOT=${DOMAIN_ROOT:-./data/textvid_$NAME}
DATA_ROOT=${DATA_ROOT:-./data}
OUTPUT_DIR=${OUTPUT_DIR:-./vqa_checkpoint/textvid_$NAME/$LLAMA}
EVAL_DATASET=${EVAL_DATASET:-egos}
CLIP_ARGS=()
[ -z "${CLIP:-}" ] || CLIP_ARGS=(--clip_model "$CLIP")
read -r -a WRITER_ARGS <<< "$WRITER"
read -r -a GEN_EXTRA <<< "${GEN_ARGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

echo "== 1/5 write tideos -> $DOMAIN_ROOT/textvid/textvid.json"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m textvid.generate --seeds "$SEEDS" \
  --out "$DOMAIN_ROOT/textvid" "${WRITER_ARGS[@]}" "${GEN_EXTRA[@]}"
echo "== 2/5 encode their frames (CLIP text encoder) -> $DOMAIN_ROOT/textvid/features/"
"${PYTHON:-python3}" "$REPO/extract_features.py" --dataset textvid --data_root "$DOMAIN_ROOT" "${CLIP_ARGS[@]}"
echo "== 3/5 the text memory from their frame texts -> $DOMAIN_ROOT/textvid/memory.pkl"
"${PYTHON:-python3}" "$REPO/extract_features.py" --dataset memory --data_root "$DOMAIN_ROOT" \
  --sentences "$DOMAIN_ROOT/textvid/frame_texts.txt" "${CLIP_ARGS[@]}"
echo "== 4/5 pre-align on them -> $OUTPUT_DIR"
DATA_ROOT=$DOMAIN_ROOT OUTPUT_DIR=$OUTPUT_DIR bash "$REPO/scripts/pretrain.sh" "$@"
if [ "$EVAL_DATASET" = none ]; then
  echo "== 5/5 evaluation skipped (EVAL_DATASET=none)"
  exit 0
fi
echo "== 5/5 zero-shot $EVAL_DATASET with the new checkpoint and memory"
CKPT=$OUTPUT_DIR/checkpoint_last.pth OUT=${EVAL_OUT:-results/textvid_$NAME/${LLAMA}_$EVAL_DATASET} \
  bash "$REPO/scripts/eval/zeroshot_eval_$EVAL_DATASET.sh" --data_root "$DATA_ROOT" \
  --memory_path "$DOMAIN_ROOT/textvid/memory.pkl" "${EVAL_EXTRA[@]}"
