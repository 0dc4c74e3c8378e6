"""Build TextVid's index, or pack its features, ahead of training (docs/formats.md):

  python -m dataloader.textvid index data/textvid          # textvid.index.arrow (or `data`, the data root)
  python -m dataloader.textvid pack data/textvid           # features/<idx>.pkl -> features_packed/

`index` checks every tideo (the run fails on the first bad one, naming it) and prints what the file holds,
where its index is, and the state of its features; training builds the same index itself when there is
none, so this step is optional. `pack` builds the index first if needed, then packs (resumable: run it
again after an interruption).
"""
import argparse
import os
import time

import torch

from util.errors import MissingFileError, run_cli

from ..base import DataError
from .features import SHARD_MIB, TideoFiles, pack, pack_state, packed_dir, shard_rows
from .index import ensure_index, locations, open_index


def get_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dataloader.textvid", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("index", "pack"),
                   help="index: build (or find) the index and print what the file holds; pack: also pack the features")
    p.add_argument("dir", help="the folder holding textvid.json and features/ (or the data root holding textvid/)")
    p.add_argument("--json", default=None, help="the annotations (default: DIR/textvid.json)")
    p.add_argument("--features", default=None, help="the per-tideo feature folder (default: DIR/features)")
    p.add_argument("--video_caption", action="store_true",
                   help="also require every tideo's summary (what train.py --video_caption requires)")
    p.add_argument("--shard_mib", type=float, default=SHARD_MIB,
                   help=f"pack: about this many MiB per shard (default: {SHARD_MIB})")
    return p.parse_args(argv)


def paths(args):
    folder = args.dir
    if not os.path.isfile(os.path.join(folder, "textvid.json")) and os.path.isdir(os.path.join(folder, "textvid")):
        folder = os.path.join(folder, "textvid")
    json_path = args.json or os.path.join(folder, "textvid.json")
    if not os.path.isfile(json_path):
        raise MissingFileError(f"TextVid annotations not found: {json_path}")
    return json_path, args.features or os.path.join(folder, "features")


def features_state(feature_dir, index) -> str:
    manifest, why = pack_state(feature_dir, index)
    if manifest is not None:
        return f"packed in {len(manifest['shards'])} shard(s) in {packed_dir(feature_dir)} (current; read instead " \
               f"of {feature_dir})"
    if not os.path.isdir(feature_dir):
        return f"none yet ({feature_dir} does not exist; extract_features.py --dataset textvid writes it)"
    try:
        TideoFiles(feature_dir).check(index)
        state = f"every tideo has its file in {feature_dir}"
    except DataError as e:
        state = str(e)
    return state + (f"; {why}" if packed_dir(feature_dir).exists() else "")


def main(args):
    json_path, feature_dir = paths(args)
    t0 = time.time()
    built = ensure_index(json_path, args.video_caption)
    index = open_index(json_path, args.video_caption)
    s = index.stats()
    print(f"{json_path}: {s['tideos']} tideos, {s['frames'][0]}-{s['frames'][1]} frames each, {s['rows']} "
          f"feature rows; {s['qas']} QAs ({s['qas_per_tideo'][0]}-{s['qas_per_tideo'][1]} a tideo, "
          f"{s['qas_without_open_answer']} without an open answer); {s['without_summary']} tideos without a summary")
    size = os.path.getsize(index.path) / 2**20
    how = f"built in {time.time() - t0:.1f} s" if built else "up to date"
    print(f"index: {index.path} ({size:.1f} MiB, {how}; the other place it may live: "
          f"{[str(p) for p in locations(json_path) if str(p) != index.path][0]})")
    if args.command == "pack":
        torch.set_num_threads(1)   # checks of small tensors: threads only contend (20x slower on a busy machine)
        m = pack(index, feature_dir, shard_rows(args.shard_mib))
        print(f"packed {m['tideos']} tideos, {m['rows']} rows into {len(m['shards'])} shard(s) in "
              f"{packed_dir(feature_dir)}")
    print(f"features: {features_state(feature_dir, index)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args(), "python -m dataloader.textvid"))
