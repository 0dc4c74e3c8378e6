"""Raw videos (and text) -> the CLIP ViT-L/14 feature files that eval.py and train.py read.

  python extract_features.py --dataset nextqa --video_dir /path/to/NExTVideo          # data/nextqa/clipvitl14.pth
  python extract_features.py --dataset folder --video_dir my_videos --output my.pth  # any videos, keys = names
  torchrun --nproc_per_node 8 extract_features.py --dataset egos --video_dir videos  # one process per GPU

docs/extraction.md has every benchmark's command, the sampling rules and the file layouts.
Needs the optional install: pip install -e ".[video]".
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from video.clip import DEFAULT_MODEL  # noqa: E402

DATASETS = ("nextqa", "star", "tvqa", "egos", "mvbench", "msrvtt", "vatex", "folder", "textvid", "memory")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what")
    g.add_argument("--dataset", required=True, choices=DATASETS)
    g.add_argument("--data_root", default="./data", help="annotations are read from, and features written to, here")
    g.add_argument("--video_dir", default=None, help="videos or frame folders, searched recursively by name")
    g.add_argument("--video_map", default=None,
                   help="JSON {key: path} or csv key,path naming videos whose file names differ from the keys")
    g.add_argument("--splits", default=None, type=lambda s: s.split(","),
                   help="nextqa/star/tvqa/egos: comma-separated splits (default: every split found)")
    g.add_argument("--mvbench_root", default=None, help="MVBench: the folder holding json/ and video/")
    g.add_argument("--tasks", default=None, type=lambda s: s.split(","),
                   help="MVBench: comma-separated json stems (default: all 20 tasks)")
    g.add_argument("--annotations", default=None,
                   help="msrvtt/vatex: the annotation json; textvid: textvid.json (defaults under --data_root)")
    g.add_argument("--sentences", default=None, help="memory: .txt (one sentence a line) or .json list")
    g.add_argument("--output", default=None,
                   help="where to write (default: the benchmark's layout under --data_root); a .pth file "
                        "holds one dict, any other path is a folder of <key>.npy files")
    s = p.add_argument_group("sampling")
    s.add_argument("--fps", type=float, default=None,
                   help="frames per second for nextqa/star/egos/folder (default 1) and tvqa (default 3)")
    s.add_argument("--num_frames", type=int, default=None,
                   help="folder: this many frames per video, from uniform segments, instead of --fps")
    s.add_argument("--frames_fps", type=float, default=3, help="the frame rate of frame folders (TVQA's: 3)")
    r = p.add_argument_group("running")
    r.add_argument("--clip_model", default=DEFAULT_MODEL,
                   help="CLIP in Hugging Face format: a local folder or a hub name")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: one GPU per process)")
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="CLIP compute dtype (default fp16 on GPU, fp32 on CPU); features are stored in fp16")
    r.add_argument("--batch_size", type=int, default=256, help="frames (or sentences) per CLIP forward pass")
    r.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader workers decoding videos (0: decode in this process)")
    r.add_argument("--group", type=int, default=None,
                   help="videos (tideos) encoded together: their frames, in order, are cut into --batch_size "
                        "batches, so features never depend on where a run was interrupted; a group is saved, "
                        "and redone after an interruption, as a whole (default: batch_size // 16)")
    r.add_argument("--save_every", type=int, default=100, help="save finished results every N videos")
    r.add_argument("--skip_bad", action="store_true",
                   help="write the output without the videos that failed (they are still listed)")
    r.add_argument("--overwrite", action="store_true",
                   help="delete earlier results of this output and start over (default: resume)")
    r.add_argument("--max_videos", type=int, default=None,
                   help="stop after this many videos per process; rerun to continue")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.fps is not None and args.num_frames is not None:
        p.error("--fps and --num_frames exclude each other")
    if args.num_frames is not None and args.dataset != "folder":
        p.error("--num_frames is for --dataset folder (the benchmarks have their own rules)")
    if args.fps is not None and args.fps <= 0:
        p.error("--fps must be positive")
    for name in ("batch_size", "group", "save_every", "max_videos", "num_frames"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        p.error(f"--num_workers must be >= 0, got {args.num_workers}")
    return args


def main(argv=None) -> int:
    """Exit status: 0 done (or stopped by --max_videos); 1 some videos failed (they are listed), or the
    command itself is wrong (one line on stderr, and SystemExit(1) from run_cli)."""
    from util.errors import run_cli
    from video.extract import main as run
    return run_cli(run, get_args(argv), "extract_features.py")


if __name__ == "__main__":
    sys.exit(main())
