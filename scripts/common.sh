# Sourced by the scripts in scripts/*/: picks the backbone and the launcher. Edit or override by env:
#   LLAMA=llama2_7b|llama2_13b|llama3_8b   which backbone (default llama2_7b)
#   NPROC=N                                processes per node (GPUs); NNODES, NODE_RANK, MASTER_ADDR for multi-node
#   TORCHRUN="python"                      run without torchrun (single process; used by the tests' --dry_run)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LLAMA=${LLAMA:-llama2_7b}
case "$LLAMA" in
  llama2_7b)  MODEL_ARGS=(--llama2 --model 7B --llama_model_path ./pretrained/llama2/) ;;
  llama2_13b) MODEL_ARGS=(--llama2 --model 13B --llama_model_path ./pretrained/llama2/) ;;
  # released Llama-3 TOPA checkpoints were trained and evaluated with RoPE theta 10000 (docs/training.md)
  llama3_8b)  MODEL_ARGS=(--llama3 --model 8B --llama_model_path ./pretrained/llama3/ --rope_theta 10000) ;;
  *) echo "unknown LLAMA=$LLAMA (llama2_7b, llama2_13b, llama3_8b)" >&2; exit 2 ;;
esac
NPROC=${NPROC:-1}
if [ -z "${TORCHRUN:-}" ]; then
  if [ "${NNODES:-1}" -gt 1 ]; then
    TORCHRUN="torchrun --nnodes $NNODES --node_rank ${NODE_RANK:-0} --nproc_per_node $NPROC \
      --master_addr ${MASTER_ADDR:-127.0.0.1} --master_port ${MASTER_PORT:-29500}"
  else
    TORCHRUN="torchrun --standalone --nproc_per_node $NPROC"
  fi
fi
