"""The TextVid index: `textvid.json` parsed and checked once into an Arrow IPC file (Feather v2,
uncompressed) that every rank and DataLoader worker memory-maps read-only. No per-tideo Python object
outlives the dataset's construction, so nothing is copied on write in the workers; pages of the file
are the operating system's page cache, shared by every process that maps it.

Where it lives (docs/formats.md):

    <folder of textvid.json>/textvid.index.arrow            when that folder is writable, else
    $TOPA_CACHE/textvid/textvid-<16 hex>.index.arrow         (the hex: sha256 of the json's real path;
                                                              TOPA_CACHE: $XDG_CACHE_HOME/topa, ~/.cache/topa)

One row per tideo (`SCHEMA`): `idx`, `counts` (entries of each frame dict), `rows` (their sum: the
tideo's feature rows), `qas` (list of {question, options, answer: 0-based, open_answer: null when absent
or blank}), `caption` (the summary; null when absent or blank); record batches of `BATCH` tideos. The
schema's metadata (`topa.textvid`) holds `FORMAT` and the key of the json it was built from: its size,
mtime (ns) and the sha256 of its first and last MiB (`SourceKey`). An index whose format or key is not
the file's now is never used; it is rebuilt.

Building (`ensure_index`): under an exclusive lock beside the index (`.<name>.lock`, util/lock.py; a
second process, a second training on the same machine, waits for the first and then finds the index
built), the json is streamed (`read_tideos`), every tideo checked (`parse_tideo`: the messages name the
file and the tideo), duplicate ids refused, and the file written atomically (util/files.py). Under
torchrun rank 0 builds it while the others wait (`open_index`); a rank that still finds none (a machine
whose data folder is its own) builds its own, under the same lock.
"""
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from util import dist
from util.files import write_atomic
from util.lock import OutputLock

from ..base import DataError
from .tideo import TextQA, Tideo, parse_tideo, read_tideos

FORMAT = 1            # bump when the schema or the checks change: older indexes are rebuilt
BATCH = 8192          # tideos per record batch
META = b"topa.textvid"
HEAD_TAIL = 1 << 20   # bytes of the json's head and tail in its key

STR = pa.large_string()
QA_TYPE = pa.struct([("question", STR), ("options", pa.large_list(STR)), ("answer", pa.int8()),
                     ("open_answer", STR)])
SCHEMA = pa.schema([("idx", STR), ("counts", pa.large_list(pa.int32())), ("rows", pa.int64()),
                    ("qas", pa.large_list(QA_TYPE)), ("caption", STR)])


@dataclass(frozen=True)
class SourceKey:
    """What identifies the json an index was built from."""
    size: int
    mtime_ns: int
    head_tail_sha256: str

    @classmethod
    def of(cls, path) -> "SourceKey":
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= 2 * HEAD_TAIL:
                h.update(f.read())
            else:
                h.update(f.read(HEAD_TAIL))
                f.seek(-HEAD_TAIL, os.SEEK_END)
                h.update(f.read())
        return cls(st.st_size, st.st_mtime_ns, h.hexdigest())


# ---- writing ----

class _Columns:
    """One record batch of the index, filled tideo by tideo."""

    def __init__(self):
        self.idx, self.rows, self.captions = [], [], []
        self.counts, self.count_offsets = [], [0]
        self.questions, self.answers, self.opens, self.qa_offsets = [], [], [], [0]
        self.options, self.option_offsets = [], [0]

    def __len__(self):
        return len(self.idx)

    def add(self, t: Tideo):
        self.idx.append(t.idx)
        self.captions.append(t.caption)
        self.counts += t.counts
        self.count_offsets.append(len(self.counts))
        self.rows.append(sum(t.counts))
        for qa in t.qas:
            self.questions.append(qa.question)
            self.answers.append(qa.answer)
            self.opens.append(qa.open_answer)
            self.options += qa.options
            self.option_offsets.append(len(self.options))
        self.qa_offsets.append(len(self.questions))

    def batch(self) -> pa.RecordBatch:
        def lists(offsets, values):
            return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
        options = lists(self.option_offsets, pa.array(self.options, STR))
        qas = pa.StructArray.from_arrays([pa.array(self.questions, STR), options, pa.array(self.answers, pa.int8()),
                                          pa.array(self.opens, STR)], fields=list(QA_TYPE))
        return pa.record_batch([pa.array(self.idx, STR), lists(self.count_offsets, pa.array(self.counts, pa.int32())),
                                pa.array(self.rows, pa.int64()), lists(self.qa_offsets, qas),
                                pa.array(self.captions, STR)], schema=SCHEMA)


def build_index(json_path: str, out: Path, need_caption: bool, key: SourceKey):
    """Stream, check and write the index of `json_path` to `out` (atomically); a DataError naming the
    file and tideo for a bad tideo, a duplicate id, or a json that changed while it was read."""
    meta = {"format": FORMAT, "source": os.path.abspath(json_path), "key": asdict(key)}
    schema = SCHEMA.with_metadata({META: json.dumps(meta)})

    def write(f):
        with ipc.new_file(f, schema) as w:
            cols, seen, dups = _Columns(), set(), []
            for pos, raw in read_tideos(json_path):
                t = parse_tideo(raw, json_path, pos, need_caption)
                if t.idx in seen:
                    dups.append(t.idx)
                seen.add(t.idx)
                cols.add(t)
                if len(cols) == BATCH:
                    w.write_batch(cols.batch())
                    cols = _Columns()
            if len(cols):
                w.write_batch(cols.batch())
        if dups:
            raise DataError(f"{json_path}: duplicate tideo idx {dups[:5]} ({len(dups)} in all)")
        if SourceKey.of(json_path) != key:
            raise DataError(f"{json_path}: the file changed while it was indexed; run again")

    write_atomic(out, write)


# ---- reading ----

class TideoIndex(Sequence):
    """An index file, memory-mapped: `len(index)`, `index[i]` -> the Tideo at position i (made on demand,
    the same as `parse_tideo` makes it from the json), and whole columns for the checks of the dataset.
    Pickled (a DataLoader started with spawn) it is reopened by path."""

    def __init__(self, path):
        self.path = str(path)
        reader = ipc.open_file(pa.memory_map(self.path, "r"))
        self.meta = json.loads(reader.schema.metadata[META])
        if reader.schema.remove_metadata() != SCHEMA:
            raise ValueError(f"{self.path}: not an index of this format")
        table = reader.read_all()        # zero-copy: the columns are views of the mapped file
        self._idx, self._counts, self._rows, self._qas, self._caption = (table.column(n) for n in SCHEMA.names)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    @property
    def key(self) -> SourceKey:
        return SourceKey(**self.meta["key"])

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int) -> Tideo:
        if not 0 <= i < len(self):
            raise IndexError(f"tideo {i} of {len(self)}")
        qas = tuple(TextQA(q["question"], tuple(q["options"]), q["answer"], q["open_answer"])
                    for q in self._qas[i].as_py())
        return Tideo(self._idx[i].as_py(), tuple(self._counts[i].as_py()), qas, self._caption[i].as_py(), i)

    def ids(self) -> List[str]:
        return self._idx.to_pylist()

    def rows(self) -> np.ndarray:
        """Feature rows of every tideo [n] (int64)."""
        return self._rows.to_numpy()

    def first_without_caption(self) -> Optional[int]:
        if self._caption.null_count == 0:
            return None
        return self._caption.to_pylist().index(None)

    def stats(self) -> dict:
        """What the index holds, for `python -m dataloader.textvid index`."""
        frames = np.concatenate([c.value_lengths().to_numpy() for c in self._counts.chunks])
        qas = np.concatenate([c.value_lengths().to_numpy() for c in self._qas.chunks])
        opens = sum(c.values.field("open_answer").null_count for c in self._qas.chunks)
        return {"tideos": len(self), "frames": (int(frames.min()), int(frames.max())), "rows": int(self.rows().sum()),
                "qas": int(qas.sum()), "qas_per_tideo": (int(qas.min()), int(qas.max())),
                "qas_without_open_answer": int(opens), "without_summary": self._caption.null_count}


# ---- finding, building, opening ----

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("TOPA_CACHE") or os.path.join(base, "topa"))


def locations(json_path: str) -> Tuple[Path, Path]:
    """(beside the json, in the cache) where its index may live."""
    p = Path(json_path)
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
    return p.with_name(f"{p.stem}.index.arrow"), cache_dir() / "textvid" / f"{p.stem}-{digest}.index.arrow"


def find_index(json_path: str, key: SourceKey) -> Optional[TideoIndex]:
    """The index of this json as it is now (its key), or None."""
    for p in locations(json_path):
        if not p.is_file():
            continue
        try:
            index = TideoIndex(p)
        except (pa.ArrowException, OSError, KeyError, ValueError, TypeError):
            continue              # not an index (foreign, or of another format): rebuilt
        if index.meta.get("format") == FORMAT and index.key == key:
            return index
    return None


def ensure_index(json_path: str, need_caption: bool) -> Optional[Path]:
    """Build the index of `json_path` unless a current one exists (under the lock); its path if built."""
    beside, cache = locations(json_path)
    target = beside if os.access(beside.parent, os.W_OK) else cache
    with OutputLock(target.with_name(f".{target.name}.lock"), f"the TextVid index {target}", wait=True):
        key = SourceKey.of(json_path)
        if find_index(json_path, key) is not None:
            return None
        t0 = time.time()
        print(f"indexing {json_path} ({key.size / 2**20:.1f} MiB) into {target}", file=sys.stderr, flush=True)
        build_index(json_path, target, need_caption, key)
        print(f"indexed {json_path} in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        return target


def open_index(json_path: str, need_caption: bool = False) -> TideoIndex:
    """The index of `json_path`, built first where there is none for the file as it is (rank 0 builds,
    the other ranks wait); with `need_caption` every tideo must have a summary."""
    dist.on_main(ensure_index, json_path, need_caption)
    index = find_index(json_path, SourceKey.of(json_path))
    if index is None:             # not rank 0, and this machine's files are not rank 0's
        ensure_index(json_path, need_caption)
        index = find_index(json_path, SourceKey.of(json_path))
    if index is None:
        raise DataError(f"{json_path}: the file changes while it is indexed; run again when it is written")
    if need_caption:
        i = index.first_without_caption()
        if i is not None:
            raise DataError(f"{json_path}: tideo {index[i].idx}: no 'global_video_caption' (needed by --video_caption)")
    return index
