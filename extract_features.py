"""Raw videos (and text) -> the CLIP ViT-L/14 feature files that eval.py and train.py read: a benchmark's
videos sampled by its published frame rule, any folder of videos, TextVid's tideos or the text memory.
Runs plainly on CPU/GPU or under torchrun (one process per GPU); a run interrupted at any point resumes
where it stopped, and its features do not depend on where that was.

  python extract_features.py --dataset nextqa --video_dir /path/to/NExTVideo          # data/nextqa/clipvitl14.pth
  python extract_features.py --dataset folder --video_dir my_videos --output my.pth  # any videos, keys = names
  torchrun --nproc_per_node 8 extract_features.py --dataset egos --video_dir videos  # one process per GPU

docs/extraction.md has every benchmark's command, the sampling rules and the file layouts.
Needs the optional install: pip install -e ".[video]".
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from util.errors import ConfigError, run_cli  # noqa: E402
from util.settings import add_flags, from_flags, make_parser  # noqa: E402
from video.config import ExtractConfig  # noqa: E402


def get_args(argv=None) -> ExtractConfig:
    """The flags -> ExtractConfig; a bad combination ends like any argparse error (usage, status 2)."""
    p = add_flags(make_parser(__doc__), ExtractConfig)
    try:
        return from_flags(ExtractConfig, p.parse_args(argv))
    except ConfigError as e:
        p.error(str(e))


def main(argv=None) -> int:
    """Exit status: 0 done (or stopped by --max_videos); 1 some videos failed (they are listed), or the
    command itself is wrong (one line on stderr, and SystemExit(1) from run_cli)."""
    cfg = get_args(argv)
    from video.extract import main as run
    return run_cli(run, cfg, "extract_features.py",
                   hint=lambda: "what was finished is kept (run the same command to resume)")


if __name__ == "__main__":
    sys.exit(main())
