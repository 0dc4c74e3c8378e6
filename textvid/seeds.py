"""Seed captions in, jobs out: what a run asks the writer for, and the id each answer gets.

    --seeds captions.txt      one caption a line (blank lines skipped)
    --seeds captions.jsonl    one {"caption": ..., "domain": ...} a line ("domain" optional)

A job is (seed line, k) for k < --per_seed. Its tideo id is a digest of the line number, the caption, k and
--seed: the same seeds file and --seed give the same ids on any machine, in any order, after any
interruption, and a line added to the file adds its jobs without moving the others. Jobs that share a
caption form a group: the near-duplicate check compares a tideo with the kept tideos of its group, so a
group is written by one process (`--shard i/n` splits groups), one job at a time, in file order.
"""
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from dataloader.base import jsonl_objects, read_text
from util.errors import ConfigError, DataError, MissingFileError


@dataclass(frozen=True)
class Seed:
    line: int                 # 1-based line of the seeds file
    caption: str
    domain: Optional[str]


@dataclass(frozen=True)
class Job:
    order: int                # position among all jobs (file order, then k): the order of textvid.json
    seed: Seed
    k: int
    idx: str
    group: int                # jobs with the same caption share a group

    def request_seed(self, try_no: int) -> int:
        """The sampling seed of this job's try `try_no` (1-based): a retry samples anew, a rerun the same."""
        return int(hashlib.sha256(f"{self.idx}:{try_no}".encode()).hexdigest()[:8], 16)


def read_seeds(path) -> List[Seed]:
    """The seeds of a .txt or .jsonl file; a bad line is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--seeds {path}: no such file")
    jsonl = path.suffix == ".jsonl"
    if not jsonl and path.suffix not in (".txt", ""):
        raise ConfigError(f"--seeds {path}: expected a .txt (one caption a line) or .jsonl file")
    if jsonl:
        seeds = [_parse_row(row, where) for where, row in jsonl_objects(path, "seed")]
    else:
        lines = io.StringIO(read_text(path), newline=None)
        seeds = [Seed(n, line.strip(), None) for n, line in enumerate(lines, 1) if line.strip()]
    if not seeds:
        raise DataError(f"--seeds {path}: no captions in the file")
    return seeds


def _parse_row(row: dict, where: str) -> Seed:
    caption, domain = row.get("caption"), row.get("domain")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: 'caption' must be a non-empty string")
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise DataError(f"{where}: 'domain' must be a non-empty string when given")
    return Seed(int(where.rsplit(":", 1)[1]), caption.strip(), domain.strip() if domain else None)


def tideo_id(seed: Seed, k: int, run_seed: int) -> str:
    text = f"{run_seed}\n{seed.line}\n{k}\n{seed.caption}"
    return "tv" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def plan_jobs(seeds: List[Seed], per_seed: int, run_seed: int) -> List[Job]:
    """Every job of the seeds file, in file order."""
    groups: dict = {}
    jobs = []
    for s in seeds:
        g = groups.setdefault(" ".join(s.caption.lower().split()), len(groups))
        for k in range(per_seed):
            jobs.append(Job(len(jobs), s, k, tideo_id(s, k, run_seed), g))
    return jobs


def shard_jobs(jobs: List[Job], shard: Tuple[int, int]) -> List[Job]:
    """The jobs of shard i of n: those of every n-th caption group."""
    i, n = shard
    return [j for j in jobs if j.group % n == i]
