"""Shared fixtures: `fixtures_dir` (the real public files of tests/fixtures, or of $TOPA_FIXTURES when set;
checked before any test runs: one line names what is missing or changed), `builder` (a PromptBuilder on the
fixtures' Llama-2 tokenizer, T = 10) and `tiny_world` (a small synthetic world from toyworld/synthetic.py,
built once per session).

Under TOPA_CI=1 a skip is a failure, except for tests marked `cuda` (they depend on a CUDA device)."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from toyworld import fixtures  # noqa: E402  (after the path: a checkout that is not installed)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixtures.fixtures_dir()


@pytest.fixture(scope="session")
def builder(fixtures_dir):
    """The prompts of the fixtures' Llama-2 tokenizer with T = 10 frames (PromptBuilder holds no state)."""
    from text.prompts import PromptBuilder
    from text.tokenizer import load_tokenizer
    return PromptBuilder(load_tokenizer(fixtures_dir / "llama2" / "tokenizer.model"), 10)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict:
    """toyworld.synthetic.build summary (absolute Paths) of a small world: 24 tideos, 20 NExT-QA val + 10
    train questions, 8 EgoSchema questions, a dim-64 2-layer Llama at <root>/pretrained/llama2/tiny."""
    from toyworld.synthetic import build
    root = tmp_path_factory.mktemp("synthetic_world")
    return build(root, seed=0, n_textvid=24, n_nextqa=20, n_nextqa_train=10, n_egos=8, dim=64)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models run faster so, much faster than on two when the
    machine is busy, and in-process references do not compete with the eval.py/train.py subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    problem = fixtures.problem()
    if problem:
        raise pytest.UsageError(problem)
    config.addinivalue_line("markers", "cuda: depends on a CUDA device; the only tests TOPA_CI=1 lets skip")


def _no_skips_in_ci(report, cuda: bool):
    if os.environ.get("TOPA_CI") and report.skipped and not cuda and not hasattr(report, "wasxfail"):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"TOPA_CI=1: skipped ({why}); CI runs every test but those marked cuda"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _no_skips_in_ci(outcome.get_result(), item.get_closest_marker("cuda") is not None)


_SKIPPED_MODULES = []


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips at import (importorskip): under TOPA_CI=1 it fails the run at its end (a
    failed collection would stop the whole run at once)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("TOPA_CI") and report.skipped:
        _SKIPPED_MODULES.append(f"{report.nodeid}: {report.longrepr[2] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session):
    if _SKIPPED_MODULES:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    for line in _SKIPPED_MODULES:
        terminalreporter.write_line(f"TOPA_CI=1: module skipped, which fails the run: {line}", red=True)
