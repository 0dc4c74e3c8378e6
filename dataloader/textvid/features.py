"""TextVid's CLIP text features: the released layout (one file per tideo), or the same rows packed into a
few shards (`python -m dataloader.textvid pack DIR`; docs/formats.md).

    <textvid>/features/<idx>.pkl       a pickled tensor [rows, 768] per tideo (extract_features.py)
    <textvid>/features_packed/
        shard-00000.npy ...            [rows, 768] in NumPy's .npy format: float16 (float32 for a shard
                                       with a source file that is not float16, so that no value changes),
                                       the tideos' rows in the index's order, a tideo never split
        offsets.npy                    int64 [n_tideos + 1]: tideo i's rows are offsets[i]:offsets[i+1],
                                       counted over the shards in order
        plan.json                      the packing run's plan (what a rerun resumes)
        pack.json                      written last: the shards, the key of the textvid.json and the mtime
                                       of features/ they were packed from; the pack is complete when it exists

The dataset reads a pack that is current (packed from the json as it is now, and from features/ as it is
now where that folder still exists) and otherwise says why on one line and reads the per-tideo files.
Packed or not, the rows are checked the same way when read (shape, floating point, finite) and give the
same numbers. A tideo's packed rows are read with one positional read (`os.preadv`) into memory of
their own, as MosaicML's shards are read, so a worker keeps no mapped pages of the features.

Packing checks every file as the dataset does, writes each shard atomically, resumes after an
interruption (the shards of the same plan that are done are kept), and holds the folder's lock
(util/lock.py) while it runs.
"""
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from util.errors import InputError, MissingFileError
from util.files import load_pickled_tensor, prepare_output_dir, write_atomic, write_text_atomic

from ..base import FEATURE_DIM, DataError, check_finite_rows, check_float, load_json
from .index import TideoIndex
from .tideo import Tideo

PACK_FORMAT = 1
SHARD_MIB = 1024        # default shard size


def packed_dir(feature_dir) -> Path:
    f = Path(feature_dir)
    return f.with_name(f"{f.name}_packed")


def check_rows(rows: torch.Tensor, t: Tideo, where) -> torch.Tensor:
    """The rows of tideo `t` read from `where`: [sum of its frames' entries, 768], floating point, finite."""
    want = sum(t.counts)
    if rows.ndim != 2 or rows.shape[1] != FEATURE_DIM or rows.shape[0] != want:
        raise DataError(f"{where}: features of tideo {t.idx} have shape {list(rows.shape)}, but its "
                        f"{len(t.counts)} frames have {want} entries in all: expected [{want}, {FEATURE_DIM}]")
    check_float(rows.dtype, f"tideo {t.idx}", where)
    check_finite_rows(rows, f"tideo {t.idx}", where)
    return rows


class TideoFiles:
    """The released layout: `<folder>/<idx>.pkl`."""

    def __init__(self, folder):
        self.folder = str(folder)

    def path(self, t: Tideo) -> str:
        return os.path.join(self.folder, f"{t.idx}.pkl")

    def check(self, index: TideoIndex):
        """Every tideo has its file (one directory listing, not a stat per tideo)."""
        with os.scandir(self.folder) as it:
            present = {e.name for e in it}
        ids = index.ids()
        missing = [i for i in ids if f"{i}.pkl" not in present]
        if missing:
            raise DataError(f"{self.folder}: no features file for {len(missing)} of {len(ids)} "
                            f"tideos: {', '.join(f'{m}.pkl (tideo {m})' for m in missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")

    def read(self, t: Tideo) -> Tuple[torch.Tensor, str]:
        """(rows as stored, the file) of tideo `t`; the file missing or unreadable is a DataError naming it."""
        path = self.path(t)
        if not os.path.isfile(path):
            raise DataError(f"{path}: features file of tideo {t.idx} is missing")
        try:
            return load_pickled_tensor(path), path
        except InputError as e:  # its message names the file: add the tideo
            raise type(e)(f"{e} (features of tideo {t.idx})") from None


@dataclass
class Shard:
    file: str
    first: int          # its first tideo
    end: int            # one past its last tideo
    rows: int
    dtype: str = ""


class PackedFeatures:
    """A complete pack (`features_packed/`), read by positional reads."""

    def __init__(self, folder, manifest: dict):
        self.folder, self.manifest = Path(folder), manifest
        self.shards = [Shard(**s) for s in manifest["shards"]]
        self.offsets = np.load(self.folder / "offsets.npy", mmap_mode="r")
        self.first = np.array([s.first for s in self.shards])
        self._headers = [_npy_header(self.folder / s.file, s) for s in self.shards]   # (data offset, dtype)
        self._fds = {}

    def __getstate__(self):          # pickled (DataLoader with spawn): reopened by path
        return {"folder": self.folder, "manifest": self.manifest}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["manifest"])

    def read(self, t: Tideo) -> Tuple[torch.Tensor, str]:
        """(rows as stored, the shard) of tideo `t` (a Tideo of the index: its position finds its rows)."""
        if not 0 <= t.pos < len(self.offsets) - 1:
            raise ValueError(f"tideo {t.idx} has no position in the index ({t.pos})")
        k = int(np.searchsorted(self.first, t.pos, "right")) - 1
        shard, (start, dtype) = self.shards[k], self._headers[k]
        path = str(self.folder / shard.file)
        a, b = int(self.offsets[t.pos]), int(self.offsets[t.pos + 1])
        row0 = int(self.offsets[shard.first])
        buf = bytearray((b - a) * FEATURE_DIM * dtype.itemsize)
        if k not in self._fds:
            self._fds[k] = os.open(path, os.O_RDONLY)
        got = os.preadv(self._fds[k], [buf], start + (a - row0) * FEATURE_DIM * dtype.itemsize)
        if got != len(buf):
            raise DataError(f"{path}: the shard ends before the rows of tideo {t.idx} (truncated?); repack")
        rows = torch.frombuffer(buf, dtype=torch.float16 if dtype == np.float16 else torch.float32)
        return rows.view(-1, FEATURE_DIM), path

    def close(self, _close=os.close):  # bound now: at interpreter exit `os` may already be gone (__del__)
        for fd in self._fds.values():
            _close(fd)
        self._fds = {}

    def __del__(self):
        self.close()


def _npy_header(path: Path, shard: Shard):
    """(byte offset of the data, dtype) of a shard file, which must hold [shard.rows, 768] float16/32."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f".npy format {version}")
            shape, fortran, dtype = read[version](f)
            start = f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable shard of the pack ({e}); repack") from None
    if shape != (shard.rows, FEATURE_DIM) or fortran or dtype not in (np.float16, np.float32):
        raise DataError(f"{path}: holds {dtype} {list(shape)}, the pack says float [{shard.rows}, {FEATURE_DIM}]; "
                        "repack")
    return start, dtype


def pack_state(feature_dir, index: TideoIndex) -> Tuple[Optional[dict], str]:
    """(the manifest of a current pack, '') or (None, why there is none to use)."""
    folder = packed_dir(feature_dir)
    manifest_path = folder / "pack.json"
    if not manifest_path.is_file():
        return None, f"{folder} has no complete pack"
    m = load_json(manifest_path)
    if not isinstance(m, dict) or m.get("format") != PACK_FORMAT or m.get("json") != asdict(index.key):
        return None, f"{folder} was packed from another version of {index.meta['source']}"
    if os.path.isdir(feature_dir) and os.stat(feature_dir).st_mtime_ns != m["features_mtime_ns"]:
        return None, f"{feature_dir} changed after {folder} was packed"
    return m, ""


def open_features(feature_dir: str, index: TideoIndex, announce: bool):
    """The features of the dataset: a current pack, else the per-tideo files (checked: every tideo has
    one); `announce` (rank 0) says on one line why a pack that is there is not used."""
    manifest, why = pack_state(feature_dir, index)
    if manifest is not None:
        return PackedFeatures(packed_dir(feature_dir), manifest)
    if not os.path.isdir(feature_dir):
        raise MissingFileError(f"TextVid feature folder not found: {feature_dir} ({why})")
    if announce and packed_dir(feature_dir).exists():
        print(f"warning: {why}: reading {feature_dir}/<idx>.pkl instead (python -m dataloader.textvid pack "
              f"{os.path.dirname(feature_dir) or '.'} repacks)", file=sys.stderr, flush=True)
    files = TideoFiles(feature_dir)
    files.check(index)
    return files


# ---- packing ----

def plan_shards(rows: np.ndarray, per_shard: int) -> List[List[int]]:
    """Consecutive tideo ranges of about `per_shard` rows each (a tideo is never split)."""
    shards, first, n = [], 0, 0
    for i, r in enumerate(rows.tolist()):
        n += r
        if n >= per_shard:
            shards.append([first, i + 1])
            first, n = i + 1, 0
    if first < len(rows):
        shards.append([first, len(rows)])
    return shards


class _NotHalf(Exception):
    """A source file of a float16 shard is not float16: the shard is written as float32."""


def _write_shard(path: Path, index: TideoIndex, files: TideoFiles, shard: Shard) -> str:
    for dtype in (np.float16, np.float32):
        def write(f):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (shard.rows, FEATURE_DIM)}
            np.lib.format.write_array_header_1_0(f, header)
            for i in range(shard.first, shard.end):
                t = index[i]
                rows, where = files.read(t)
                check_rows(rows, t, where)
                if dtype == np.float16 and rows.dtype != torch.float16:
                    raise _NotHalf
                if dtype == np.float32:          # exact from float16/bfloat16; what the dataset computes in
                    rows = rows.float()
                    check_finite_rows(rows, f"tideo {t.idx}", where)
                f.write(rows.contiguous().numpy().tobytes())
        try:
            write_atomic(path, write)
            return np.dtype(dtype).name
        except _NotHalf:
            continue
    raise AssertionError("unreachable")


def shard_rows(mib: float) -> int:
    """Rows of float16 features in about `mib` MiB."""
    return max(1, int(mib * 2**20) // (FEATURE_DIM * 2))


def pack(index: TideoIndex, feature_dir: str, rows_per_shard: int = shard_rows(SHARD_MIB), log=print) -> dict:
    """Pack `feature_dir`'s per-tideo files into `<feature_dir>_packed/`, shards of about `rows_per_shard`
    rows (module docstring); resumes a run of the same plan. Returns the manifest."""
    if not os.path.isdir(feature_dir):
        raise MissingFileError(f"TextVid feature folder not found: {feature_dir}")
    out = packed_dir(feature_dir)
    rows = index.rows()
    plan = {"format": PACK_FORMAT, "json": asdict(index.key), "features_mtime_ns": os.stat(feature_dir).st_mtime_ns,
            "shards": plan_shards(rows, rows_per_shard)}
    with prepare_output_dir(out, "pack", need_bytes=int(rows.sum()) * FEATURE_DIM * 2):
        old = load_json(out / "plan.json") if (out / "plan.json").is_file() else None
        if old is not None and old != plan:
            log(f"{out}: the earlier run packed another version of the data: starting over")
        if old != plan:
            for p in list(out.glob("shard-*.npy")) + [out / "offsets.npy"]:
                p.unlink(missing_ok=True)
        for p in [out / "pack.json"] + list(out.glob(".*.tmp")):    # a repack, or what a killed run left
            p.unlink(missing_ok=True)
        write_text_atomic(json.dumps(plan, indent=1), out / "plan.json")
        files, shards, t0 = TideoFiles(feature_dir), [], time.time()
        offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        for k, (a, b) in enumerate(plan["shards"]):
            shard = Shard(f"shard-{k:05d}.npy", a, b, int(offsets[b] - offsets[a]))
            path = out / shard.file
            try:
                shard.dtype = str(_npy_header(path, shard)[1]) if path.is_file() else ""
            except DataError:
                shard.dtype = ""
            if not shard.dtype:
                shard.dtype = _write_shard(path, index, files, shard)
            shards.append(shard)
            log(f"shard {k + 1}/{len(plan['shards'])}: tideos {a}-{b - 1}, {shard.rows} rows, {shard.dtype}")
        write_atomic(out / "offsets.npy", lambda f: np.save(f, offsets))
        manifest = dict(plan, shards=[asdict(s) for s in shards], tideos=len(rows), rows=int(offsets[-1]),
                        seconds=round(time.time() - t0, 1))
        write_text_atomic(json.dumps(manifest, indent=1), out / "pack.json")
    return manifest

