#!/usr/bin/env bash
# The README's main job on an embedded default: a tiny random Llama-2-style model, a synthetic world,
# CPU only, a few minutes. It shows the whole TOPA idea at toy scale:
#   1. write the world: TextVid-format "videos" whose frames are CLIP-like *text* features, NExT-QA and
#      EgoSchema-format eval sets whose frames are *image* features (text + a modality gap + clutter),
#      a text-feature memory, a tiny Llama in Meta's format and its SentencePiece tokenizer; print how far
#      image features are from the text features of the same frames, raw and projected onto the memory;
#   2. zero-shot eval before pre-alignment (chance is 20%);
#   3. pre-align on TextVid (text features only), printing the loss curve;
#   4. zero-shot eval on image features, without and with --memory;
#   5. the accuracy table of 2 and 4, every question type (from the runs' accuracy_*.json).
# The backbone is random, so this world's questions offer each family's options in one fixed order
# (the letter follows from the video; a real Llama also reads the options). OUT=dir picks the folder.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-./demo}
EPOCHS=${EPOCHS:-12}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
quiet() { "$@" 2> >(grep -v 'it/s\|no --resume checkpoint' >&2); }  # progress bars off, errors kept
COMMON=(--llama_model_path "$OUT/pretrained/llama2/" --model tiny --llama2 --data_root "$OUT/data"
        --max_feats 10 --adapter_len 10 --bias 3.5 --device cpu --precision fp32 --num_workers 0)

# evaluate NAME DATASET [flags]: zero-shot on the world's image features into $OUT/results/NAME (its
# printed table kept in $OUT/results/NAME.log), then one line with the overall accuracy
evaluate() {
  local name=$1 ds=$2; shift 2
  quiet python "$REPO/eval.py" "${COMMON[@]}" --dataset "$ds" --batch_size 16 --max_seq_len 600 \
    --output_dir "$OUT/results/$name" "$@" > "$OUT/results/$name.log"
  python - "$OUT/results/$name" <<'PY'
import glob, json, sys
acc = json.load(open(glob.glob(sys.argv[1] + "/accuracy_*.json")[0]))["accuracy"]["total"]
print(f"   {sys.argv[1].rsplit('/', 1)[1]:<14} {acc['acc']:5.1f}% ({acc['correct']}/{acc['total']})")
PY
}

echo "== 1. synthetic world -> $OUT"
python -m toyworld.synthetic --out "$OUT" --n_textvid 400 --n_nextqa 150 --n_egos 100 > /dev/null
mkdir -p "$OUT/results"
python - "$OUT" <<'PY'
import json, sys
import numpy as np, torch
from llama.memory import load_memory, project_to_memory
from toyworld.synthetic import World
out = sys.argv[1]; w = json.load(open(out + "/synthetic_world.json"))
print(f"   {w['n_textvid']} tideos ({w['n_textvid_qas']} QAs), memory {w['n_memory']} rows, "
      f"NExT-QA val {w['n_nextqa_val']} q, EgoSchema val {w['n_egos']} q")
print("   a tideo is a video written as text: one description per frame (LLM-written in TextVid), CLIP text-encoded")
world, rng = World(w["seed"]), np.random.default_rng([w["seed"], 99])
frames = [v.frame_concepts(int(rng.integers(v.n_frames))) for v in (world.sample_video(rng) for _ in range(500))]
text = torch.tensor(np.stack([world.text_feature(c, rng) for c in frames]), dtype=torch.float32)
image = torch.tensor(np.stack([world.image_feature(c, rng) for c in frames]), dtype=torch.float32)
projected = project_to_memory(image, load_memory(out + "/" + w["memory"]))
cos = lambda a: torch.nn.functional.cosine_similarity(a, text).mean().item()
print(f"   cosine of image to text features of the same frames (mean of 500): {cos(image):.2f}; "
      f"{cos(projected):.2f} after the memory projection (--memory)")
PY

echo "== 2. zero-shot before pre-alignment (fresh adapters, gate1 = 0)"
evaluate before_nextqa nextqa
evaluate before_egos egos

echo "== 3. text-only pre-alignment on TextVid ($EPOCHS epochs)"
quiet python "$REPO/train.py" "${COMMON[@]}" --textvid --max_seq_len 150 --batch_size 16 --accum_iter 1 \
  --epochs "$EPOCHS" --warmup_epochs 1 --lr 2e-2 --weight_decay 0.0 --log_every 0 --no_tensorboard \
  --output_dir "$OUT/checkpoints" --overwrite > "$OUT/checkpoints.log"  # a re-run starts over (so does the world)
python - "$OUT/checkpoints/log.jsonl" <<'PY'
import json, sys
ep = [json.loads(l) for l in open(sys.argv[1])]
ep = [(r["epoch"], r["train_loss"]) for r in ep if r.get("type") == "epoch"]
top = max(l for _, l in ep)
print("   loss curve (epoch: mean train loss):")
for e, l in ep:
    print(f"   {e:>3}: {l:6.3f}  " + "#" * max(1, round(40 * l / top)))
PY

echo "== 4. zero-shot on image features, without and with --memory"
for ds in nextqa egos; do
  evaluate "$ds" "$ds" --resume "$OUT/checkpoints/checkpoint_last.pth"
  evaluate "${ds}_memory" "$ds" --resume "$OUT/checkpoints/checkpoint_last.pth" --memory
done

echo "== 5. zero-shot accuracy %, every question type (chance 20%)"
python - "$OUT/results" "$EPOCHS" <<'PY'
import json, sys
res, epochs = sys.argv[1], sys.argv[2]
acc = lambda run, ds: json.load(open(f"{res}/{run}/accuracy_{ds}_val.json"))["accuracy"]
cols = [("nextqa", "total", "all")]  # (dataset, bucket, header): C/T/D, and each raw type where a group has several
for g in "CTD":
    raw = [b for b in acc("nextqa", "nextqa") if len(b) == 2 and b[0] == g]
    cols.append(("nextqa", g, f"{g} ({raw[0]})" if len(raw) == 1 else g))
    cols += [("nextqa", b, b) for b in raw] if len(raw) > 1 else []
cols += [("egos", "total", "all")]
rows = [("before pre-alignment", "before_{}"), (f"after {epochs} epochs, text only", "{}"),
        ("after, with --memory", "{}_memory")]
head = "NExT-QA val".ljust(8 * (len(cols) - 1))
print(f"   {'':<28}{head}  EgoSchema val\n   {'':<28}" + "".join(f"{h:>8}" for _, _, h in cols))
print(f"   {'questions':<28}" + "".join(f"{acc(ds, ds)[b]['total']:>8}" for ds, b, _ in cols))
for label, run in rows:
    print(f"   {label:<28}" + "".join(f"{acc(run.format(ds), ds)[b]['acc']:8.1f}" for ds, b, _ in cols))
print("   NExT-QA types: C causal (CH: how), T temporal (TC: what at the middle frame), D descriptive (DC: how many)")
print("   each run: results/<run>/accuracy_*.json, and its printed table results/<run>.log")
PY
