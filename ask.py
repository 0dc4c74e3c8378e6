"""Ask a TOPA model about one video: frames -> CLIP ViT-L/14 -> TOPA -> the answer, printed.

  python ask.py my_video.mp4 --question "What is the man doing?" --options cooking dancing reading \\
      --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --describe --resume vqa_checkpoint/topa_llama2_7b.pth
  python ask.py my_video.mp4 --question "Where are they?" --resume ...          # open question

Needs the optional install: pip install -e ".[video]". engine/ask.py says which prompt each request uses.
"""
import argparse

from engine.ask import AskConfig, run
from engine.config import _model_config, add_model_args
from util.errors import run_cli


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video", help="a video file (mp4, mkv, webm, ...) or a folder of numbered frames")
    g = p.add_argument_group("request")
    g.add_argument("--question", "-q", default=None, help="the question (with --options: multiple choice)")
    g.add_argument("--options", nargs="+", default=[], help="the answer options (2 or more)")
    g.add_argument("--describe", action="store_true", help="describe the video (MSR-VTT's captioning prompt)")
    g.add_argument("--resume", default=None, help="the TOPA checkpoint")
    g.add_argument("--clip_model", default="openai/clip-vit-large-patch14",
                   help="CLIP ViT-L/14 in Hugging Face format: a local folder or a hub name")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--memory", action="store_true", default=None, help="project the frames onto the text memory (default)")
    m.add_argument("--no_memory", dest="memory", action="store_false", help="no memory projection")
    g.add_argument("--memory_path", default="./data/textvid/memory.pkl", help="the TextVid text-feature memory")
    g.add_argument("--max_new_tokens", type=int, default=None, help="default: the prompt's protocol")
    g.add_argument("--frames_fps", type=float, default=3.0, help="the frame rate of a frame folder")
    add_model_args(p)
    return p.parse_args(argv)


def main(args):
    return run(AskConfig(video=args.video, model=_model_config(args), question=args.question, options=args.options,
                         describe=args.describe, resume=args.resume, clip_model=args.clip_model, memory=args.memory,
                         memory_path=args.memory_path, max_new_tokens=args.max_new_tokens,
                         frames_fps=args.frames_fps, device=args.device))


if __name__ == "__main__":
    run_cli(main, get_args(), "ask.py")
