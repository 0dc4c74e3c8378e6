"""Write your own TextVid: tideos for any domain, by any LLM, checked by the dataset's own rules and written
in the released layout, ready for extract_features.py --dataset textvid and train.py --textvid.

  python -m textvid.generate --seeds captions.txt --out data/mine/textvid --hf_model ./Qwen2.5-7B-Instruct
  python -m textvid.generate --seeds captions.jsonl --out data/mine/textvid \\
      --base_url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --concurrency 32

Writes <out>/textvid.json, rejected.json (what was given up, and why) and frame_texts.txt (the sentences of
the text memory). Rerun the same command to resume; --shard I/N splits the seeds across machines. The
prompt, the schema, the checks and the paper's settings as flags: docs/textvid.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from textvid.config import GenConfig  # noqa: E402
from util.errors import ConfigError, run_cli  # noqa: E402
from util.settings import add_flags, from_flags, make_parser  # noqa: E402


def get_args(argv=None) -> GenConfig:
    """The flags -> GenConfig; a bad combination ends like any argparse error (usage, status 2)."""
    p = add_flags(make_parser(__doc__, prog="python -m textvid.generate"), GenConfig)
    try:
        return from_flags(GenConfig, p.parse_args(argv))
    except ConfigError as e:
        p.error(str(e))


def main(cfg: GenConfig):
    """The run's `Report` (textvid/run.py); bad input ends with one line (run_cli)."""
    from textvid.run import run
    return run(cfg)


if __name__ == "__main__":
    run_cli(main, get_args(), "textvid.generate",
            hint=lambda: "what was finished is kept (run the same command to resume)")
