"""Shared fixtures: the tiny offline pipeline (built once per session) and small clips on disk.

Everything the tests, and the processes they start (Ray, torchrun, multiprocessing, qvedit's cache),
write to a temporary folder goes into one folder made for the session and removed at its end, so
nothing is left in the system's temporary folder; pytest's own ``tmp_path`` folders stay where
pytest keeps them.
"""

import os
import shutil
import tempfile
from pathlib import Path

# This file is imported twice (as conftest and as tests.conftest): the second import finds the first's folder.
if "QVEDIT_TESTS_TMP" not in os.environ:
    os.environ["QVEDIT_TESTS_SYSTEM_TMP"] = tempfile.gettempdir()
    os.environ["QVEDIT_TESTS_TMP"] = tempfile.mkdtemp(prefix="qvedit-tests-")
SYSTEM_TMP = Path(os.environ["QVEDIT_TESTS_SYSTEM_TMP"])
SESSION_TMP = Path(os.environ["QVEDIT_TESTS_TMP"])
# Before anything imports hydra/huggingface: never touch the network, keep test artefacts apart.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(SYSTEM_TMP))  # pytest's tmp_path root stays put
os.environ["TMPDIR"] = str(SESSION_TMP)  # Ray, torch and multiprocessing make their folders here
tempfile.tempdir = None  # re-read TMPDIR
os.environ.setdefault("QVEDIT_CACHE", str(SESSION_TMP / "qvedit-cache"))

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qvedit.models.settings import TinyModel

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = TinyModel.in_cache().model_id


@pytest.fixture
def tiny_pipe():
    """The process-wide tiny pipeline (qvedit's own loader cache keeps one; built once per machine)."""
    return TinyModel(TINY_MODEL).load(device="cpu", dtype="fp32")


def write_clip(folder: Path, size=(64, 48), edges=3, seed=0) -> tuple[Path, Path]:
    """A random init frame and ``edges`` random edge frames; returns (init path, edge folder)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    init = folder / "init.png"
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(init)
    edge_dir = folder / "edges"
    edge_dir.mkdir(exist_ok=True)
    for k in range(1, edges + 1):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(edge_dir / f"{k}.png")
    return init, edge_dir


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "clip")


def run_qvedit(*args, module="qvedit", timeout=600, env=None) -> subprocess.CompletedProcess:
    """``python -m qvedit ARGS`` (or another module) from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_the_system_temp_folder():
    """Fails the session's last test if anything new appeared in the system temp folder (pytest's
    own ``pytest-of-*`` and this session's folder aside)."""
    before = set(os.listdir(SYSTEM_TMP))
    yield
    left = sorted(set(os.listdir(SYSTEM_TMP)) - before - {SESSION_TMP.name}
                  - {name for name in os.listdir(SYSTEM_TMP) if name.startswith("pytest-of-")})
    assert not left, f"tests left {left} in {SYSTEM_TMP}"
