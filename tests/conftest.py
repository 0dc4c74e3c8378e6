"""Shared fixtures: `fixtures_dir` (the real files of $TOPA_FIXTURES; skips when unset) and
`tiny_world` (a small synthetic world from toyworld/synthetic.py, built once per session)."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    d = os.environ.get("TOPA_FIXTURES")
    if not d:
        pytest.skip("TOPA_FIXTURES not set")
    return Path(d)


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
