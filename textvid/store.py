"""The output folder of a generation run: append-only shard logs while it runs, the released layout when
every job is done.

    OUT/textvid.json               the tideos, in seeds-file order (atomic; written when every job is done)
    OUT/rejected.json              the jobs given up after --max_tries, each try with its reason (atomic)
    OUT/frame_texts.txt            every distinct frame text, one a line (the memory's sentences)
    OUT/generate/settings.json     what decides the answers (prompt, writer, sampling, counts, --seed, shards)
    OUT/generate/part-I-of-N.jsonl one line per answer of shard I: {"idx", "try", "tokens": [in, out], and
                                   "tideo": {...} or "reason", "message", "answer" (its first 300 characters)}

A part is only ever appended to, one whole line per answer, flushed at once; a kill leaves whole lines (a torn
last line is cut off when the shard resumes). Resuming reads the part back: a job with a kept tideo, or with
--max_tries rejected answers, is done; any other goes on with its next try (each try has its own sampling
seed, so the answers are those an uninterrupted run gets). Each shard holds its own lock
(`util/lock.py`, `.generate-I-of-N.lock`); the final files are written under the folder's lock by whichever
shard finds every job of every part done. A folder that holds answers made with other settings is refused.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from dataloader.base import load_json
from util.errors import ConfigError, DataError
from util.files import LineWriter, prepare_output_dir, write_text_atomic
from util.lock import LOCK_NAME, OutputLock

from .seeds import Job

GEN_DIR = "generate"
EXCERPT = 300


@dataclass
class JobState:
    tideo: Optional[dict] = None
    rejections: List[dict] = field(default_factory=list)
    tokens: Tuple[int, int] = (0, 0)

    def finished(self, max_tries: int) -> bool:
        return self.tideo is not None or len(self.rejections) >= max_tries

    def add_tokens(self, line: dict):
        a, b = line.get("tokens") or (0, 0)
        self.tokens = (self.tokens[0] + int(a), self.tokens[1] + int(b))


def read_part(path: Path, cut: bool = False) -> Dict[str, JobState]:
    """idx -> JobState from a part file. A torn last line (a kill mid-write) is skipped, and with `cut`
    removed from the file (the part's own shard, before it appends again)."""
    states: Dict[str, JobState] = {}
    if not path.is_file():
        return states
    raw = path.read_bytes()
    whole = raw[:raw.rfind(b"\n") + 1]
    if cut and len(whole) < len(raw):
        os.truncate(path, len(whole))
    for n, line in enumerate(whole.decode("utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
            st = states.setdefault(rec["idx"], JobState())
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: not a line this program wrote; move the file away or use --overwrite") \
                from None
        st.add_tokens(rec)
        if "tideo" in rec:
            st.tideo = rec["tideo"]
        else:
            st.rejections.append({k: rec.get(k) for k in ("try", "reason", "message")})
    return states


class Store:
    """Shard `shard` of the folder `out` (see the module docstring). Use as a context manager: it holds the
    shard's lock and its part file open."""

    def __init__(self, out, shard: Tuple[int, int], settings: dict, overwrite: bool = False):
        self.out, self.shard, self.settings = Path(out), shard, settings
        i, n = shard
        self.dir = self.out / GEN_DIR
        self.part = self.dir / f"part-{i}-of-{n}.jsonl"
        lock_name = LOCK_NAME if n == 1 else f".generate-{i}-of-{n}.lock"
        self.lock = prepare_output_dir(self.out, "--out", lock_name=lock_name)
        self._writer = None
        try:
            if overwrite:
                self._remove_previous()
            self._check_settings()
        except BaseException:
            self.lock.release()
            raise

    def _remove_previous(self):
        for p in [self.part, *(self.out / name for name in ("textvid.json", "rejected.json", "frame_texts.txt"))]:
            if p.exists():
                p.unlink()
        if self.shard[1] == 1 and (self.dir / "settings.json").exists():
            (self.dir / "settings.json").unlink()

    def _check_settings(self):
        path = self.dir / "settings.json"
        if path.is_file():
            have = load_json(path)
            diff = [k for k in sorted(set(have) | set(self.settings)) if have.get(k) != self.settings.get(k)]
            if diff:
                what = "; ".join(f"{k}: {have.get(k)!r} there, {self.settings.get(k)!r} now" for k in diff[:3])
                raise ConfigError(f"--out {self.out} holds tideos written with other settings ({what}); run with "
                                  "the same flags, another --out, or --overwrite")
        else:
            write_text_atomic(json.dumps(self.settings, indent=1, sort_keys=True) + "\n", path)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.lock.release()

    def load(self) -> Dict[str, JobState]:
        """This shard's answers so far (its torn last line cut off), then the part open for appending."""
        states = read_part(self.part, cut=True)
        self._writer = LineWriter.append(self.part)
        return states

    def append(self, record: dict):
        self._writer.write(json.dumps(record, ensure_ascii=False) + "\n")

    def all_states(self) -> Dict[str, JobState]:
        """Every shard's answers (read-only: another shard's torn last line is skipped, not cut)."""
        states: Dict[str, JobState] = {}
        for p in sorted(self.dir.glob(f"part-*-of-{self.shard[1]}.jsonl")):
            states.update(read_part(p, cut=p == self.part))
        return states

    def assemble(self, jobs: List[Job], max_tries: int) -> Optional[List[Job]]:
        """Write the final files if every job of every shard is done; returns the jobs still open (None when
        another shard is writing the final files right now)."""
        states = self.all_states()
        open_jobs = [j for j in jobs if not states.get(j.idx, JobState()).finished(max_tries)]
        if open_jobs:
            return open_jobs
        lock = self.lock if self.shard[1] == 1 else None
        try:
            lock = lock or OutputLock(self.out / LOCK_NAME, f"--out {self.out}")
        except ConfigError:
            return None
        try:
            write_final(self.out, jobs, states)
        finally:
            if lock is not self.lock:
                lock.release()
        return []


def write_final(out: Path, jobs: List[Job], states: Dict[str, JobState]):
    tideos = [states[j.idx].tideo for j in jobs if states[j.idx].tideo is not None]
    given_up = [{"idx": j.idx, "line": j.seed.line, "caption": j.seed.caption, "tries": states[j.idx].rejections}
                for j in jobs if states[j.idx].tideo is None]
    frame_texts = dict.fromkeys(" ".join(v.split()) for t in tideos for f in t["frames"] for v in f.values())
    write_text_atomic("".join(f"{s}\n" for s in frame_texts), out / "frame_texts.txt")
    write_text_atomic(json.dumps(given_up, indent=1, ensure_ascii=False) + "\n", out / "rejected.json")
    write_text_atomic(json.dumps(tideos, ensure_ascii=False) + "\n", out / "textvid.json")
