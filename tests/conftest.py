"""Shared fixtures: the tiny offline pipeline (built once per session) and small clips on disk.

Everything the tests, and the processes they start (Ray, torchrun, multiprocessing, qvedit's cache),
write to a temporary folder goes into one folder made for the session (``TMPDIR`` points there) and
removed at its end; pytest's own ``tmp_path`` folders too (``PYTEST_DEBUG_TEMPROOT``).

The session's folder is its own: its name is new (``mkdtemp``), qvedit's cache (``QVEDIT_CACHE``: the
tiny model, the demo clip) is inside it whatever the caller's environment says, and only the process
that made it removes it. Before, the folder was found again through an inherited environment variable,
so any pytest session started from the session's environment (a nested run, a second run from a shell
that had the variable) took the same folder as its own and removed it when it ended, the demo clip of
the first session with it ("image not found: .../qvedit-cache/demo-clip/edges/00002.png").
"""

import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

# This file is imported twice (as conftest and as tests.conftest) and by processes the tests start (a
# multiprocessing child unpickling a test's function, a torchrun worker): those share the session's folder.
# A pytest session of its own (its command is pytest's) makes a new one unless it made the one it inherits.
# (A spawned child is given its parent's argv and name before it imports this file: the name tells it apart.)
_PYTEST_SESSION = multiprocessing.current_process().name == "MainProcess" and (
    Path(sys.argv[0]).name in ("pytest", "py.test") or sys.argv[0].endswith("pytest/__main__.py"))
_OWNED = os.environ.get("QVEDIT_TESTS_TMP_OWNER") == str(os.getpid())
if "QVEDIT_TESTS_TMP" not in os.environ or (_PYTEST_SESSION and not _OWNED):
    os.environ["QVEDIT_TESTS_TMP"] = tempfile.mkdtemp(prefix="qvedit-tests-")
    os.environ["QVEDIT_TESTS_TMP_OWNER"] = str(os.getpid())
SESSION_TMP = Path(os.environ["QVEDIT_TESTS_TMP"])
OWNER = int(os.environ["QVEDIT_TESTS_TMP_OWNER"])
# Under pytest-xdist (the suite's default, -n auto) every core runs a worker: one thread each, for the tests
# and the processes they start. Two-thread processes on busy cores spin against each other (many times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
# Before anything imports hydra/huggingface: never touch the network, keep test artefacts apart.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest's own tmp_path folders (pytest-of-<user>/pytest-N and, under xdist, its workers' popen-gw*) go into the
# session's folder too, removed with it: pytest otherwise keeps the last three sessions' in the system's.
os.environ["PYTEST_DEBUG_TEMPROOT"] = str(SESSION_TMP)
os.environ["TMPDIR"] = str(SESSION_TMP)  # Ray, torch and multiprocessing make their folders here
tempfile.tempdir = None  # re-read TMPDIR
os.environ["QVEDIT_CACHE"] = str(SESSION_TMP / "qvedit-cache")  # the session's own, never a shared one

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.models.loading import load_pipeline
from qvedit.settings.model import TinyModel

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = TinyModel.in_cache().model_id
TINY_21_MODEL = TinyModel.in_cache("2.1").model_id
MODELS = ("tiny", "tiny_21")  # the model= presets the loop tests run on: one tiny model per family


@pytest.fixture
def tiny_pipe():
    """The process-wide tiny pipeline (qvedit's own loader cache keeps one; built once per machine)."""
    return load_pipeline(TinyModel(TINY_MODEL), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_21_pipe():
    """The tiny Qwen-Image 2.1 pipeline (``model=tiny_21``: built offline on first use), loaded once per session
    beside the tiny 2509 one, frozen as the loader freezes it. The loader's cache holds one pipeline at a time, and
    tests alternating the two families would load them again and again (runs of ``model=tiny_21`` use the
    loader)."""
    from diffusers import QwenImage21Pipeline

    from qvedit.models.tiny21 import build_tiny_21_model

    folder = Path(TINY_21_MODEL)
    if not (folder / "model_index.json").is_file():
        build_tiny_21_model(folder)
    pipe = QwenImage21Pipeline.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    return pipe


@pytest.fixture(params=MODELS)
def family_pipe(request):
    """The tiny pipeline of each family in turn (a loop test parametrised over ``tiny`` and ``tiny_21``)."""
    return request.getfixturevalue("tiny_pipe" if request.param == "tiny" else "tiny_21_pipe")


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


# The thread count of the shared commands below, which a test that compares bytes with theirs gives its own
# processes too (CPU frames depend on it): one under xdist, else torch's default on this machine.
THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())}
SAFETY_TIMEOUT_S = 3600  # only a process that truly hangs meets it; a busy machine is slow, not wrong


def run_qvedit(*args, module="qvedit", timeout=SAFETY_TIMEOUT_S, env=None) -> subprocess.CompletedProcess:
    """``python -m qvedit ARGS`` (or another module) from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def scratch_folders_left() -> list[str]:
    """A torchrun follower's scratch run folders (``qvedit-rank*``, made in ``TMPDIR``, removed at its exit)
    still in the session's folder. Only the session's own folder is looked at: the system's is every program's."""
    return sorted(p.name for p in SESSION_TMP.glob("qvedit-rank*"))


def pytest_sessionfinish(session, exitstatus):
    if os.getpid() != OWNER:  # only the session that made the folder removes it
        return
    left = scratch_folders_left()
    if left and session.config.pluginmanager.hasplugin("dsession"):  # the xdist controller
        # under xdist the workers' own check cannot run (another worker may be mid-torchrun): it is made here
        print(f"\nFAILED: scratch folders left in {SESSION_TMP}: {left}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long`` first, in their order, then the others: xdist hands the work out in this order
    (a group of tests sharing a run before them all), so the short tests come last and the workers end together
    instead of one running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session", autouse=True)
def scratch_folders_are_removed():
    """Fails the session's last test if a torchrun follower's scratch folder is left (without xdist; with it,
    the session's end checks once every worker is done)."""
    yield
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        left = scratch_folders_left()
        assert not left, f"scratch folders left in {SESSION_TMP}: {left}"


# The fixed end-to-end commands whose frames tests/test_golden_frames.py holds to their recorded pixels. Each
# runs once per session (a worker's) and every test that reads its outputs shares it (xdist_group: same worker).
TEMPORAL = ["experiment=tiny_cpu", "io=demo", "ttlg=edge_gram_temporal", "ttlg.last_steps=3"]
COMMANDS = {  # name -> the commands run one after another into one folder
    "demo": [["experiment=demo"]],
    "acceptance_demo_sweep": [["experiment=acceptance_demo", "max_frames=3", "num_inference_steps=4", "seed=0,1",
                               "-m"]],
    # the uninterrupted clip the resume tests compare with; its recorded bytes are those of a run stopped after
    # frame 4 and resumed (recorded so on 2026-12-01): an uninterrupted run meeting them shows resuming changes none
    "temporal": [TEMPORAL],
}


# A segment schedule (keyframes 3 and 6, segments 1-2, 4-5 and 7; frames 2 and 5 meet the next keyframe) with
# flow-warped temporal guidance after frame 0's edit, in one process, with one thread: the frames Ray's workers
# (one thread each) must give too (tests/test_schedule.py). Shared like the commands above, not held to recorded
# pixels.
SEGMENTS = ["experiment=tiny_cpu", "io=demo", "ttlg=edge_gram_flow", "ttlg.last_steps=2", "num_inference_steps=4",
            "max_frames=8", "schedule=segments", "schedule.keyframe_every=3", "schedule.meet_frames=1",
            "first_frame.prompt=make it a watercolour painting", "first_frame.num_inference_steps=2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHARED = {"segments": ([SEGMENTS], ONE_THREAD)}  # name -> (commands, environment)


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """``made(name)`` -> (folder, [the finished process of each command]): ``COMMANDS[name]`` (or ``SHARED[name]``)
    run once per session into one folder (a run folder, or a sweep folder for a ``-m`` command). Readers must not
    change it."""
    runs = {}

    def make(name: str):
        if name not in runs:
            folder, results = tmp_path_factory.mktemp("made") / name, []
            commands, env = SHARED[name] if name in SHARED else (COMMANDS[name], THREADS)
            for command in commands:
                sweep = "-m" in command
                overrides = [arg for arg in command if arg != "-m"]
                results.append(run_qvedit(*overrides, f"hydra.{'sweep' if sweep else 'run'}.dir={folder}",
                                          *(["-m"] if sweep else []), env=env))
                assert results[-1].returncode == 0, results[-1].stderr[-3000:]
            runs[name] = (folder, results)
        return runs[name]

    return make
