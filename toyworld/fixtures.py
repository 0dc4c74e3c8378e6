"""Where the real public files of the tests and benches are (tests/fixtures/: both Llama tokenizers, NExT-QA,
EgoSchema and TVQA question text; sources and licences in its README.md), and whether they are all there,
unchanged.

The folder is the repository's `tests/fixtures`; the environment variable `TOPA_FIXTURES` names another copy
instead (an override only). `tests/fixtures/SHA256SUMS` lists every file with its sha256 (`sha256sum -c`
reads it too); `problem(folder)` is one line naming what is missing or changed, or None.

    python -m toyworld.fixtures        # prints the folder (exit 0) or the one line (exit 1); CI runs it
"""
import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[1]
SUMS = REPO / "tests" / "fixtures" / "SHA256SUMS"


def fixtures_dir() -> Path:
    """$TOPA_FIXTURES when set, else the repository's tests/fixtures."""
    return Path(os.environ.get("TOPA_FIXTURES") or REPO / "tests" / "fixtures")


def expected() -> Dict[str, str]:
    """{relative path: sha256} from tests/fixtures/SHA256SUMS (`<hex>  <path>` lines)."""
    out = {}
    for line in SUMS.read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        out[path.lstrip("*").removeprefix("./")] = digest
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def problem(folder=None) -> Optional[str]:
    """One line naming the missing and changed files of `folder` (default: `fixtures_dir()`), or None."""
    folder = Path(folder) if folder is not None else fixtures_dir()
    from_env = bool(os.environ.get("TOPA_FIXTURES")) and Path(os.environ["TOPA_FIXTURES"]) == folder
    if not SUMS.is_file():
        return f"{SUMS} is missing: the list of fixture files and their sha256 (a partial checkout?)"
    where = f"{folder} (TOPA_FIXTURES)" if from_env else str(folder)
    want = expected()
    missing = [p for p in want if not (folder / p).is_file()]
    changed = [p for p in want if p not in missing and sha256(folder / p) != want[p]]
    if not missing and not changed:
        return None
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"changed (sha256 differs from tests/fixtures/SHA256SUMS) {', '.join(changed)}"] if changed else [])
    return f"fixtures folder {where}: {'; '.join(parts)}"


def folder_arg(value: str) -> str:
    """argparse type of the benches' `--fixtures`: the folder, checked (one line when something is wrong)."""
    msg = problem(value)
    if msg:
        raise argparse.ArgumentTypeError(msg)
    return value


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The benches' `--fixtures` flag, default `fixtures_dir()`, checked when parsed."""
    parser.add_argument("--fixtures", type=folder_arg, default=str(fixtures_dir()),
                        help="folder of the real tokenizers and benchmark text (default: $TOPA_FIXTURES, "
                             "else the repository's tests/fixtures)")


def main() -> int:
    msg = problem()
    print(msg or f"fixtures complete: {fixtures_dir()}", file=sys.stderr if msg else sys.stdout)
    return 1 if msg else 0


if __name__ == "__main__":
    sys.exit(main())
