"""Ask a TOPA model about one video: frames -> CLIP ViT-L/14 -> TOPA -> the answer, printed (the only line
on stdout; warnings go to stderr). A question with options is answered by MVBench's letter protocol, a
question alone by the open-QA prompt, --describe by MSR-VTT's captioning prompt (engine/api.py says which
frames, memory and prompt each uses; it is the Python API behind this script).

  python ask.py my_video.mp4 --question "What is the man doing?" --options cooking dancing reading \\
      --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --describe --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --question "Where are they?" --resume ...          # open question

Needs the optional install: pip install -e ".[video]".
"""
from engine.asking import AskConfig
from util.errors import run_cli
from util.settings import add_flags, from_flags, make_parser


def get_args(argv=None):
    return add_flags(make_parser(__doc__), AskConfig).parse_args(argv)


def main(args):
    from engine.asking import run
    return run(from_flags(AskConfig, args))


if __name__ == "__main__":
    run_cli(main, get_args(), "ask.py")
