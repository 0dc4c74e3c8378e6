"""Where extracted features go, written so that nothing is lost or half-written and a run can resume.

Two kinds of output:
  * DictOutput: one `.pth` file, a dict key -> fp16 tensor [rows, 768] (NExT-QA, STAR, TVQA, MVBench,
    MSR-VTT, VATEX, a folder of videos). While a run goes, each process saves what it has finished to
    `<file>.parts/` every few videos (one new part file each time, written atomically). At the end one
    process merges the parts (and a previous complete file with the same settings) into the final file,
    written atomically once, then removes the parts.
  * FileDirOutput: one file per key in a folder (EgoSchema `<uid>.npy`, TextVid `<idx>.pkl`), each
    written atomically as soon as it is done.

Resume: a key is done when it is in a part, in the final file, or (FileDirOutput) has its file. The
settings a run used (dataset, sampling rule, CLIP model, precision) are recorded beside the results
(`settings.json` in the parts folder, `<file>.extract.json` beside a final file, `.extract.json` in a
feature folder); results made with other settings are never mixed in: the run stops and says so, and
`--overwrite` deletes them and starts over.
"""
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch

from dataloader.base import load_json
from util.errors import ConfigError
from util.files import prepare_output_dir, safe_load, save_atomic, write_atomic, write_text_atomic
from util.lock import OutputLock


class SettingsMismatch(ConfigError):
    """Existing results were made with other settings."""


def _read_json(path) -> Optional[dict]:
    """A settings record, or None where there is none."""
    return load_json(path) if os.path.isfile(path) else None


FLAG_SETTINGS = ("batch_size", "group")  # settings that are flags of the same name


def _check(found: Optional[dict], settings: dict, where) -> None:
    """Refuse results made with settings other than `settings`, naming each difference (a flag as the
    flag, with the value that continues them)."""
    if found is None:
        return
    found = found.get("settings", found)
    diff = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
    if diff:
        def name(k):
            return f"--{k}" if k in FLAG_SETTINGS else k
        shown = "; ".join(f"{name(k)}: {'not recorded' if a is None else repr(a)} there, {b!r} now"
                          for k, (a, b) in diff.items())
        flags_only = all(k in FLAG_SETTINGS and a is not None for k, (a, _) in diff.items())
        again = f"rerun with {' '.join(f'--{k} {a}' for k, (a, _) in diff.items())} to continue them, " \
            if flags_only else ""
        raise SettingsMismatch(f"{where} holds features made with other settings ({shown}); {again}pass "
                               f"--overwrite to start over, or write elsewhere with --output")


class DictOutput:
    """A `.pth` dict key -> [rows, 768] (see the module docstring)."""

    def __init__(self, path, settings: dict, save_every: int = 100, save_seconds: float = 300.0):
        self.path = Path(path)
        self.parts = Path(str(self.path) + ".parts")
        self.record = Path(str(self.path) + ".extract.json")
        self.settings = settings
        self.save_every, self.save_seconds = save_every, save_seconds
        self._buffer: Dict[str, torch.Tensor] = {}
        self._last_save = time.monotonic()
        self._run_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # later runs' parts sort last
        self._seq = 0

    def describe(self) -> str:
        return str(self.path)

    def claim(self, need_bytes: int) -> OutputLock:
        """Lock this output for one run (`<file>.lock` beside it) and check its folder (rank 0)."""
        return prepare_output_dir(self.path.parent, "--output", need_bytes, lock_name=f".{self.path.name}.lock",
                                  what=f"--output {self.path}")

    def check(self, fresh: bool) -> None:
        """Raise SettingsMismatch if what is there was made otherwise (read-only; every process)."""
        if fresh:
            return
        _check(_read_json(self.parts / "settings.json"), self.settings, self.parts)
        if self.path.exists():
            rec = _read_json(self.record)
            if rec is None:
                raise SettingsMismatch(f"{self.path} exists and was not written by extract_features.py "
                                       f"(no {self.record.name}); pass --overwrite to replace it, or write "
                                       f"elsewhere with --output")
            _check(rec, self.settings, self.path)

    def prepare(self, fresh: bool) -> None:
        """One process: with `fresh`, delete earlier results (parts, final file). The parts folder and
        its settings record are made with the first part."""
        if fresh:
            shutil.rmtree(self.parts, ignore_errors=True)
            for p in (self.path, self.record):
                if p.exists():
                    p.unlink()

    def _part_files(self) -> List[Path]:
        return sorted(self.parts.glob("part-*.pth")) if self.parts.is_dir() else []

    def done_keys(self, keys) -> set:
        """Keys with results (in parts or the final file); `keys` (every key of the run) is unused here."""
        keys = set()
        for p in self._part_files():
            keys.update(safe_load(p, mmap=True))
        if self.path.exists():
            keys.update(str(k) for k in safe_load(self.path, mmap=True))
        return keys

    def complete(self) -> bool:
        """The final file is there and no parts wait to be merged into it."""
        return self.path.exists() and not self._part_files()

    def add(self, key: str, feats: torch.Tensor) -> None:
        self._buffer[key] = feats.to(torch.float16).contiguous()
        if len(self._buffer) >= self.save_every or time.monotonic() - self._last_save > self.save_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            if not (self.parts / "settings.json").exists():
                write_text_atomic(json.dumps({"settings": self.settings}, indent=1), self.parts / "settings.json")
            name = f"part-{self._run_id}-{self._seq:06d}.pth"
            save_atomic(self._buffer, self.parts / name)
            self._seq += 1
            self._buffer = {}
        self._last_save = time.monotonic()

    def finish(self, keys: Iterable[str], summary: dict) -> int:
        """One process, after every process flushed: the final file holds `keys` (in this order) that
        have features; returns how many. Parts are removed once the final file is in place."""
        have: Dict[str, torch.Tensor] = {}
        if self.path.exists():
            have.update((str(k), v) for k, v in safe_load(self.path, mmap=True).items())
        for p in self._part_files():
            have.update(safe_load(p, mmap=True))
        out = {k: have[k] for k in keys if k in have}
        save_atomic(out, self.path)
        self._write_record(summary, n_keys=len(out))
        self._remove_parts()
        return len(out)

    def _write_record(self, summary: dict, **more) -> None:
        write_text_atomic(json.dumps({"settings": self.settings, **summary, **more}, indent=1), self.record)

    def _remove_parts(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)


class FileDirOutput:
    """A folder of `<key><suffix>` files: `.npy` (np.save of fp16 [rows, 768]) or `.pkl` (torch.save
    of an fp16 tensor)."""

    def __init__(self, folder, settings: dict, suffix: str = ".npy"):
        if suffix not in (".npy", ".pkl"):
            raise ValueError(f"unknown feature file suffix {suffix!r}")
        self.folder, self.settings, self.suffix = Path(folder), settings, suffix
        self.record = self.folder / ".extract.json"

    def describe(self) -> str:
        return f"{self.folder}/<key>{self.suffix}"

    def claim(self, need_bytes: int) -> OutputLock:
        """Lock this folder for one run and check it (rank 0)."""
        return prepare_output_dir(self.folder, "--output", need_bytes)

    def file(self, key: str) -> Path:
        return self.folder / f"{key}{self.suffix}"

    def check(self, fresh: bool) -> None:
        if fresh or not self.folder.is_dir():
            return
        rec = _read_json(self.record)
        if rec is None:
            if any(self.folder.glob(f"*{self.suffix}")):
                raise SettingsMismatch(f"{self.folder} holds {self.suffix} files not written by "
                                       f"extract_features.py; pass --overwrite to replace them, or write "
                                       f"elsewhere with --output")
            return
        _check(rec, self.settings, self.folder)

    def prepare(self, fresh: bool) -> None:
        """One process: with `fresh`, delete the folder's earlier feature files; drop temporary files a
        killed run left; record the settings."""
        if self.folder.is_dir():
            for p in self.folder.glob(f".*{self.suffix}.*.tmp"):
                p.unlink()
            if fresh:
                for p in self.folder.glob(f"*{self.suffix}"):
                    p.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps({"settings": self.settings}, indent=1), self.record)

    def done_keys(self, keys) -> set:
        if not self.folder.is_dir():
            return set()
        n = len(self.suffix)
        return {e.name[:-n] for e in os.scandir(self.folder) if e.name.endswith(self.suffix)}

    def add(self, key: str, feats: torch.Tensor) -> None:
        feats = feats.to(torch.float16).contiguous().cpu()
        if self.suffix == ".pkl":
            save_atomic(feats, self.file(key))
            return
        write_atomic(self.file(key), lambda f: np.save(f, feats.numpy()))

    def flush(self) -> None:
        pass

    def complete(self) -> bool:
        return False  # nothing to merge; finishing only rewrites the record

    def finish(self, keys: Iterable[str], summary: dict) -> int:
        rec = {"settings": self.settings, **summary}
        write_text_atomic(json.dumps(rec, indent=1), self.record)
        return sum(1 for k in keys if self.file(k).is_file())


def write_failures(path, failures: List[dict]) -> None:
    """`path`: one JSON object per line {key, path, reason}; an earlier list is replaced (or removed
    when nothing failed)."""
    path = Path(path)
    if not failures:
        if path.exists():
            path.unlink()
        return
    write_text_atomic("".join(json.dumps(f) + "\n" for f in failures), path)
