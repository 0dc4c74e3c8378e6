"""Train TOPA: TextVid pre-alignment (--textvid: text-only "videos", tideos, whose frames are CLIP text
features), finetuning (--finetune --resume <TOPA checkpoint>) or the baseline (no checkpoint) on
nextqa / star / tvqa. Runs plainly on CPU/GPU or under torchrun (data parallel). Only the TOPA parameters
train and are saved (llama.adapter.is_trainable). Every epoch writes <output_dir>/checkpoint_<epoch>.pth
(+ checkpoint_last.pth, and checkpoint_best.pth when evaluation runs) and appends to
<output_dir>/log.jsonl (docs/training.md; scripts/pretrain.sh, finetune.sh, baseline.sh run the
published recipes).

  torchrun --nproc_per_node 4 train.py --model 7B --llama_model_path ./pretrained/llama2/ --textvid \\
      --video_caption --openvqa --answer_balance --max_seq_len 150 --batch_size 18 --accum_iter 4 ...
  python train.py ... --resume out/checkpoint_3.pth            # continue that run exactly
  python train.py ... --finetune --resume topa.pth --dataset nextqa   # weights only, fresh optimizer
"""
from pathlib import Path

from engine.config import TrainConfig, train_parser
from util.errors import dry_run, run_cli


def get_args(argv=None):
    return train_parser(__doc__).parse_args(argv)


def main(args):
    if dry_run(args):
        return None
    from engine.training import run
    return run(TrainConfig.from_args(args))


def stop_hint(output_dir, finetune: bool) -> str:
    """The end of the line a signal prints (util/errors.py), naming a file that exists: `--resume
    <output_dir>/checkpoint_last.pth` (without `--finetune`: the run is now its own), or, when no checkpoint
    was written, `--overwrite` (the folder holds the stopped run's log). Plain file checks: a signal may come
    while torch is still being imported, and the handler must not import it again."""
    last = Path(output_dir) / "checkpoint_last.pth"
    if last.is_file():
        return f"continue with --resume {last}" + (" and without --finetune" if finetune else "")
    return "no checkpoint was written: start over with --overwrite (deletes the stopped run's files)"


if __name__ == "__main__":
    args = get_args()
    run_cli(main, args, "train.py", hint=lambda: stop_hint(args.output_dir, args.finetune))
