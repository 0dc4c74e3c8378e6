"""Zero-shot evaluation of a TOPA checkpoint: multiple-choice scoring (NExT-QA, STAR, TVQA, EgoSchema:
every option's mean NLL, the lowest wins) or generation (MVBench, MSR-VTT, VATEX: greedy answers under
each benchmark's published protocol). Runs plainly on CPU/GPU or under torchrun with N processes; every
question is evaluated exactly once. Writes accuracy (or caption metrics) and per-question predictions to
--output_dir (docs/evaluation.md).

  python eval.py --model 7B --llama_model_path ./pretrained/llama2/ --dataset nextqa \\
      --resume vqa_checkpoint/topa.pth --memory --output_dir results/nextqa
  python eval.py ... --dataset mvbench --resume vqa_checkpoint/topa.pth --output_dir results/mvbench
  torchrun --nproc_per_node 4 eval.py ... --dataset egos --test     # EgoSchema test: a submission file
"""
from engine.config import EvalConfig, eval_parser
from util.errors import dry_run, run_cli


def get_args(argv=None):
    return eval_parser(__doc__).parse_args(argv)


def main(args):
    if dry_run(args):
        return None
    from dataloader import benchmarks
    from engine import evaluation
    from engine.generation import GenerationTask
    from engine.scoring import ScoringTask
    cfg = EvalConfig.from_args(args)
    return evaluation.run(cfg, GenerationTask if benchmarks.get(cfg.data.dataset).kind == "generate" else ScoringTask)


if __name__ == "__main__":
    run_cli(main, get_args(), "eval.py", hint=lambda: "the predictions of finished steps are kept; the same "
            "command evaluates again from the start")
