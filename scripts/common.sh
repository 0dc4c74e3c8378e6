# Sourced by every script in scripts/: picks the backbone, its published settings and the launcher.
# Edit the table below, or override by environment:
#   LLAMA=llama2_7b|llama2_13b|llama3_8b|llama3_1_8b|llama3_2_3b|llama3_2_1b   which backbone (default llama2_7b)
#   LLAMA_PATH=DIR        the backbone's --llama_model_path (default ./pretrained/<folder>/ of the table;
#                         a Hugging Face folder such as ./pretrained/Llama-3.2-1B works too)
#   NPROC=N               processes per node (GPUs); NNODES, NODE_RANK, MASTER_ADDR for multi-node
#   TORCHRUN="python"     run without torchrun (single process; used by the tests' --dry_run)
# Sets: REPO, LLAMA, MODEL_ARGS (--llama2/--llama3, --model, --llama_model_path, --rope_theta where the
# recipe fixes it), LAYERS (the backbone's depth: adapters on every layer), the recipes' PRE_*, FT_*, BL_*
# values, and TORCHRUN.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LLAMA=${LLAMA:-llama2_7b}

# One row per backbone: the published settings (docs/training.md), batch sizes per GPU with 4 GPUs.
# Llama-3.1/3.2 rows are our choice: the Llama-3 8B recipe, RoPE theta and scaling of the backbone's own files.
#  theta: --rope_theta the recipe fixes (- : the backbone's). pretrain: batch accum blr (20 epochs, warmup 1).
#  finetune: batch accum blr(nextqa star tvqa) (5 epochs, warmup 1). baseline: batch accum blr(nextqa star tvqa)
#  warmup(nextqa star tvqa) (10 epochs).
BACKBONES="
# LLAMA      family model folder   theta layers | pretrain   | finetune                 | baseline
llama2_7b    llama2 7B    llama2   -     32     | 18 4 5e-3  | 20 4  1e-2 1e-2 5e-3     | 20 4 1e-2 2e-2 2e-2 2 2 2
llama2_13b   llama2 13B   llama2   -     40     | 4  8 8e-3  | 6  16 5e-3 5e-3 5e-3     | 6  8 1e-2 2e-2 2e-2 4 2 2
llama3_8b    llama3 8B    llama3   10000 32     | 14 8 5e-3  | 20 4  1e-2 1e-2 5e-3     | 20 4 2e-2 2e-2 1e-2 2 2 2
llama3_1_8b  llama3 8B    llama3_1 -     32     | 14 8 5e-3  | 20 4  1e-2 1e-2 5e-3     | 20 4 2e-2 2e-2 1e-2 2 2 2
llama3_2_3b  llama3 3B    llama3_2 -     28     | 14 8 5e-3  | 20 4  1e-2 1e-2 5e-3     | 20 4 2e-2 2e-2 1e-2 2 2 2
llama3_2_1b  llama3 1B    llama3_2 -     16     | 14 8 5e-3  | 20 4  1e-2 1e-2 5e-3     | 20 4 2e-2 2e-2 1e-2 2 2 2
"
ROW=$([[ "$LLAMA" =~ ^[a-z0-9_]+$ ]] && grep -E "^$LLAMA " <<< "$BACKBONES" | tr -d '|') || {
  echo "unknown LLAMA=$LLAMA ($(grep -oE '^[a-z0-9_]+ ' <<< "$BACKBONES" | xargs | tr ' ' ','))" >&2; exit 2; }
read -r _ FAMILY MODEL FOLDER THETA LAYERS PRE_BATCH PRE_ACCUM PRE_BLR \
  FT_BATCH FT_ACCUM FT_BLR_nextqa FT_BLR_star FT_BLR_tvqa \
  BL_BATCH BL_ACCUM BL_BLR_nextqa BL_BLR_star BL_BLR_tvqa BL_WARMUP_nextqa BL_WARMUP_star BL_WARMUP_tvqa <<< "$ROW"
LLAMA_PATH=${LLAMA_PATH:-./pretrained/$FOLDER/}
MODEL_ARGS=(--"$FAMILY" --model "$MODEL" --llama_model_path "$LLAMA_PATH")
# released Llama-3 TOPA checkpoints were trained and evaluated with RoPE theta 10000 (docs/training.md)
[ "$THETA" = - ] || MODEL_ARGS+=(--rope_theta "$THETA")

# finetune.sh and baseline.sh: DATASET=nextqa (default), star or tvqa picks the row's entries for it
dataset_value() {  # dataset_value PREFIX -> ${PREFIX}_${DATASET}
  local v="${1}_${DATASET}"
  echo "${!v}"
}
check_dataset() {
  case "$DATASET" in
    nextqa|star|tvqa) ;;
    *) echo "DATASET=$DATASET: expected nextqa, star or tvqa" >&2; exit 2 ;;
  esac
}

NPROC=${NPROC:-1}
if [ -z "${TORCHRUN:-}" ]; then
  if [ "${NNODES:-1}" -gt 1 ]; then
    TORCHRUN="torchrun --nnodes $NNODES --node_rank ${NODE_RANK:-0} --nproc_per_node $NPROC \
      --master_addr ${MASTER_ADDR:-127.0.0.1} --master_port ${MASTER_PORT:-29500}"
  else
    TORCHRUN="torchrun --standalone --nproc_per_node $NPROC"
  fi
fi
