"""Zero-shot multiple-choice evaluation (NExT-QA, STAR, TVQA, EgoSchema). Runs plainly on CPU/GPU or
under torchrun with N processes; every question is scored exactly once.

  python eval.py --model 7B --llama_model_path ./pretrained/llama2/ --dataset nextqa \\
      --resume vqa_checkpoint/topa.pth --memory --output_dir results/nextqa
"""
from engine.config import EvalConfig, eval_parser
from engine.evaluation import run
from util.errors import run_cli


def get_args(argv=None):
    return eval_parser(__doc__.splitlines()[0]).parse_args(argv)


def main(args):
    if args.dry_run:
        print(vars(args))
        return None
    return run(EvalConfig.from_args(args))


if __name__ == "__main__":
    run_cli(main, get_args(), "eval.py")
