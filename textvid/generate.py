"""Write your own TextVid: tideos for any domain, by any LLM (docs/textvid.md).

  python -m textvid.generate --seeds captions.txt --out data/mine/textvid --hf_model ./Qwen2.5-7B-Instruct
  python -m textvid.generate --seeds captions.jsonl --out data/mine/textvid \\
      --base_url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --concurrency 32

Writes <out>/textvid.json in the released layout (ready for extract_features.py --dataset textvid and
train.py --textvid), rejected.json (what was given up, and why) and frame_texts.txt (the memory's sentences).
Rerun the same command to resume; --shard I/N splits the seeds across machines.
"""
import sys

from textvid.config import GenConfig, parser
from util.errors import run_cli


def get_args(argv=None):
    return parser(__doc__.splitlines()[0]).parse_args(argv)


def main(args):
    from textvid.run import run
    return run(GenConfig.from_args(args))


if __name__ == "__main__":
    run_cli(main, get_args(), "textvid.generate")
    sys.exit(0)
