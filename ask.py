"""Ask a TOPA model about one video: frames -> CLIP ViT-L/14 -> TOPA -> the answer, printed.

  python ask.py my_video.mp4 --question "What is the man doing?" --options cooking dancing reading \\
      --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --describe --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --question "Where are they?" --resume ...          # open question

Needs the optional install: pip install -e ".[video]". engine/api.py says which prompt each request uses
(and is the Python API behind this script: a model loaded once, asked many things).
"""
import argparse

from engine.api import QAConfig, add_api_args
from engine.ask import AskConfig, run
from engine.config import add_model_args
from util.errors import run_cli


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video", help="a video file (mp4, mkv, webm, ...) or a folder of numbered frames")
    g = p.add_argument_group("request")
    g.add_argument("--question", "-q", default=None, help="the question (with --options: multiple choice)")
    g.add_argument("--options", nargs="+", default=[], help="the answer options (2 or more)")
    g.add_argument("--describe", action="store_true", help="describe the video (MSR-VTT's captioning prompt)")
    g.add_argument("--max_new_tokens", type=int, default=None, help="default: the prompt's protocol")
    add_api_args(p)
    add_model_args(p)
    return p.parse_args(argv)


def main(args):
    return run(AskConfig(video=args.video, api=QAConfig.from_args(args), question=args.question,
                         options=args.options, describe=args.describe, max_new_tokens=args.max_new_tokens))


if __name__ == "__main__":
    run_cli(main, get_args(), "ask.py")
