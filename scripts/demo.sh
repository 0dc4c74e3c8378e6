#!/usr/bin/env bash
# The README's main job on an embedded default: a tiny random Llama-2-style model, a synthetic world,
# CPU only, a few minutes. It shows the whole TOPA idea at toy scale:
#   1. write the world: TextVid-format "videos" whose frames are CLIP-like *text* features, NExT-QA and
#      EgoSchema-format eval sets whose frames are *image* features (text + a modality gap + clutter),
#      a text-feature memory, a tiny Llama in Meta's format and its SentencePiece tokenizer;
#   2. zero-shot eval before pre-alignment (chance is 20%);
#   3. pre-align on TextVid (text features only), printing the loss curve;
#   4. zero-shot eval on image features, without and with --memory.
# The backbone is random, so this world's questions offer each family's options in one fixed order
# (the letter follows from the video; a real Llama also reads the options). OUT=dir picks the folder.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-./demo}
EPOCHS=${EPOCHS:-12}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
quiet() { "$@" 2> >(grep -v 'it/s' >&2); }  # progress bars off, errors kept
COMMON=(--llama_model_path "$OUT/pretrained/llama2/" --model tiny --llama2 --data_root "$OUT/data"
        --max_feats 10 --adapter_len 10 --bias 3.5 --device cpu --precision fp32 --num_workers 0)

echo "== 1. synthetic world -> $OUT"
python -m toyworld.synthetic --out "$OUT" --n_textvid 400 --n_nextqa 150 --n_egos 100 > /dev/null
python - "$OUT" <<'PY'
import json, sys; w = json.load(open(sys.argv[1] + "/synthetic_world.json"))
print(f"   {w['n_textvid']} tideos ({w['n_textvid_qas']} QAs), memory {w['n_memory']} rows, "
      f"NExT-QA val {w['n_nextqa_val']} q, EgoSchema val {w['n_egos']} q")
PY

echo "== 2. zero-shot before pre-alignment (fresh adapters, gate1 = 0)"
quiet python "$REPO/eval.py" "${COMMON[@]}" --dataset nextqa --batch_size 16 --output_dir "$OUT/results/before" \
  | tail -n +2 | head -3

echo "== 3. text-only pre-alignment on TextVid ($EPOCHS epochs)"
quiet python "$REPO/train.py" "${COMMON[@]}" --textvid --max_seq_len 150 --batch_size 16 --accum_iter 1 \
  --epochs "$EPOCHS" --warmup_epochs 1 --lr 2e-2 --weight_decay 0.0 --log_every 0 --no_tensorboard \
  --output_dir "$OUT/checkpoints" --overwrite  # a re-run starts over (the world above is new too)
python - "$OUT/checkpoints/log.jsonl" <<'PY'
import json, sys
ep = [json.loads(l) for l in open(sys.argv[1])]
ep = [(r["epoch"], r["train_loss"]) for r in ep if r.get("type") == "epoch"]
top = max(l for _, l in ep)
print("   loss curve (epoch: mean train loss):")
for e, l in ep:
    print(f"   {e:>3}: {l:6.3f}  " + "#" * max(1, round(40 * l / top)))
PY

CKPT="$OUT/checkpoints/checkpoint_last.pth"
for ds in nextqa egos; do
  for mem in "" "--memory"; do
    echo "== 4. zero-shot $ds on image features ${mem:-(no memory)}"
    quiet python "$REPO/eval.py" "${COMMON[@]}" --dataset "$ds" --batch_size 16 --resume "$CKPT" $mem \
      --max_seq_len 600 --output_dir "$OUT/results/${ds}${mem:+_memory}" | tail -n +2 | head -6
  done
done
