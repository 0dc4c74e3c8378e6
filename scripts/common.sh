# Sourced by every script in scripts/: picks the backbone, its published settings and the launcher.
# The table of backbones and the published recipe is Python data, llama/backbones.py (print it with
# `python3 -m llama.backbones`); override by environment:
#   LLAMA=llama2_7b|llama2_13b|llama3_8b|llama3_1_8b|llama3_2_3b|llama3_2_1b   which backbone (default llama2_7b)
#   LLAMA_PATH=DIR        the backbone's --llama_model_path (default ./pretrained/<folder>/ of the table;
#                         a Hugging Face folder such as ./pretrained/Llama-3.2-1B works too)
#   NPROC=N               processes per node (GPUs); NNODES, NODE_RANK, MASTER_ADDR for multi-node
#   TORCHRUN="python"     run without torchrun (single process; used by the tests' --dry_run)
#   PYTHON=python3        the interpreter that reads the table (standard library only)
# Sets: REPO, LLAMA, MODEL_ARGS (--llama2/--llama3, --model, --llama_model_path, --rope_theta where the
# recipe fixes it), LAYERS (the backbone's depth: adapters on every layer), the recipes' PRE_*, FT_*, BL_*
# values, the shared recipe values (BIAS, ADAPTER_LEN, MAX_FEATS, TAU, WEIGHT_DECAY, VARIANCE), and TORCHRUN.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LLAMA=${LLAMA:-llama2_7b}

ROW=$(cd "$REPO" && "${PYTHON:-python3}" -m llama.backbones "$LLAMA" --shell) || exit 2
eval "$ROW"
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
  case " $DATASETS " in
    *" $DATASET "*) ;;
    *) echo "DATASET=$DATASET: expected ${DATASETS// /, }" >&2; exit 2 ;;
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
