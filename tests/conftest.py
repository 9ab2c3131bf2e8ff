"""Shared fixtures: the tiny offline pipeline (built once per machine) and small clips on disk."""

import os
import tempfile
from pathlib import Path

# Before anything imports hydra/huggingface: never touch the network, keep test artefacts apart.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QVEDIT_CACHE", str(Path(tempfile.gettempdir()) / "qvedit-test-cache"))

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
