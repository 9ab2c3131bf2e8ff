"""A run killed mid-clip and resumed gives the same frames as an uninterrupted run; Ctrl-C says how."""

import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
import pytest

from qvedit.core.errors import QveditError
from qvedit.core.files import PARTIAL_GLOB
from qvedit.run.frame_outputs import check_or_record
from tests.conftest import REPO, SAFETY_TIMEOUT_S, TEMPORAL, run_qvedit

# Where the kill and stop tests interrupt a run: seeded, so that a failure can be run again at the same frame
# (QVEDIT_KILL_SEED=N python -m pytest tests/test_resume.py: other seeds, other frames).
KILL_SEED = int(os.environ.get("QVEDIT_KILL_SEED", "0"))

# Guidance with the temporal term: the resumed run must rebuild the previous-frame state too.
CLIP = TEMPORAL


def default_stop_signals() -> None:
    """A child of the test process starts with SIGINT and SIGTERM at their defaults and unblocked, whatever the
    test worker (an xdist worker, after other tests ran in it) has: what a shell gives a command."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qvedit", *CLIP, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=default_stop_signals)


def wait_for(path: Path, process: subprocess.Popen):
    """Until ``path`` appears: fails only when the run ended without it (however slow a busy machine makes it;
    a run that truly hangs meets the suite's safety timeout)."""
    deadline = time.monotonic() + SAFETY_TIMEOUT_S
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {SAFETY_TIMEOUT_S} s: the run hangs"
        time.sleep(0.05)


@pytest.fixture
def whole(made):
    """The clip made without interruption, once per session for the tests that stop and resume it (and for its
    golden frames): tests that use it run on one worker, ``xdist_group("temporal")``. Read only."""
    folder, _ = made("temporal")
    return folder


def assert_same_clip(whole: Path, resumed: Path) -> None:
    names = sorted(p.name for p in (whole / "frames").glob("*.png"))
    assert names == sorted(p.name for p in (resumed / "frames").glob("*.png")) and len(names) == 9
    for name in names:
        assert (whole / "frames" / name).read_bytes() == (resumed / "frames" / name).read_bytes(), name
    assert not list((resumed / "frames").glob(PARTIAL_GLOB))
    rows = pd.read_csv(resumed / "metrics.csv")
    assert rows["frame"].tolist() == list(range(1, 9))  # no duplicated or half-written row
    pd.testing.assert_series_equal(rows["edge_loss"], pd.read_csv(whole / "metrics.csv")["edge_loss"])


@pytest.mark.xdist_group("temporal")  # on the worker that made the uninterrupted clip
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, whole):
    killed = tmp_path / "killed"
    stop_after = random.Random(f"{KILL_SEED}-sigkill").randint(1, 6)
    process = start(killed)
    wait_for(killed / "frames" / f"{stop_after:05d}.png", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = sorted(p.name for p in (killed / "frames").glob("*.png"))
    assert len(kept) < 9, f"the run finished before it was killed (after frame {stop_after})"

    result = run_qvedit(*CLIP, f"hydra.run.dir={killed}")
    assert result.returncode == 0, result.stderr[-2000:]
    resumed_at = re.search(r"resuming at frame (\d+)", result.stdout + result.stderr)
    # A frame whose metrics row the kill cut off is made again, so resumption may start one frame earlier.
    assert resumed_at and len(kept) - 1 <= int(resumed_at.group(1)) <= len(kept)
    assert_same_clip(whole, killed)


@pytest.mark.xdist_group("temporal")  # on the worker that made the uninterrupted clip
def test_sigterm_stops_cleanly_and_its_resume_command_equals_an_uninterrupted_run(tmp_path, whole):
    """SIGTERM (preemption, docker stop): every frame on disk keeps its metrics row, the exit code is
    143 with the command that resumes, and a second run into the folder meanwhile is refused."""
    stopped = tmp_path / "stopped"
    process = start(stopped)
    wait_for(stopped / "frames" / f"{random.Random(f'{KILL_SEED}-sigterm').randint(1, 5):05d}.png", process)
    process.send_signal(signal.SIGSTOP)  # held still: the folder stays in use while the second run starts
    second = run_qvedit(*CLIP, f"hydra.run.dir={stopped}")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"frames is in use by process {process.pid} on " in second.stderr.strip().splitlines()[-1]
    process.send_signal(signal.SIGTERM)  # taken as soon as it runs again, mid-frame
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=SAFETY_TIMEOUT_S)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    frames = sorted(p.name for p in (stopped / "frames").glob("*.png"))
    assert 2 <= len(frames) < 9 and not list((stopped / "frames").glob(PARTIAL_GLOB))
    assert pd.read_csv(stopped / "metrics.csv")["frame"].tolist() == list(range(1, len(frames)))
    message = stderr.strip().splitlines()[-1]
    last = len(frames) - 1
    kept = f"frames 1..{last} and their metrics rows are" if last > 1 else "frame 1 and its metrics row is"
    assert message.startswith(f"qvedit: stopped by SIGTERM; {kept} kept in {stopped / 'frames'}. Resume with: "), message
    command = shlex.split(message.split("Resume with: ")[1])
    assert command[:3] == ["python", "-m", "qvedit"] and f"hydra.run.dir={stopped}" in command
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True,
                            timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming at frame {len(frames)}" in result.stdout + result.stderr
    assert_same_clip(whole, stopped)


@pytest.mark.xdist_group("temporal")  # on the worker that made the uninterrupted clip
def test_resume_with_other_settings_is_refused_listing_the_keys(tmp_path, whole):
    """One line naming each changed key, exit 2, and the failed run keeps the folder with every frame."""
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    result = run_qvedit(*CLIP, "seed=7", "ttlg.lr=0.1", f"hydra.run.dir={run}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert "seed: 0 -> 7" in error and "ttlg.lr: 0.05 -> 0.1" in error
    for path in sorted((whole / "frames").glob("*.png")):  # nothing lost or changed
        assert (run / "frames" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.long
def test_ctrl_c_keeps_frames_and_prints_how_to_resume(tmp_path):
    run = tmp_path / "run"
    process = start(run)
    wait_for(run / "frames" / "00002.png", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=SAFETY_TIMEOUT_S)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert f"Resume with: python -m qvedit {' '.join(CLIP)} hydra.run.dir={run}" in stderr
    assert (run / "frames" / "00002.png").is_file() and not list((run / "frames").glob(PARTIAL_GLOB))


def test_a_run_that_wrote_no_frame_does_not_block_the_folder(tmp_path):
    check_or_record(tmp_path, {"seed": 0})  # e.g. the model then failed to load
    check_or_record(tmp_path, {"seed": 1})  # no frames yet: new settings are fine
    (tmp_path / "00000.png").write_bytes(b"")  # frame 0 (the input) written, then the first frame failed
    check_or_record(tmp_path, {"seed": 1})
    check_or_record(tmp_path, {"seed": 2})  # the corrected command: nothing made with seed 1 is lost
    assert not (tmp_path / "00000.png").exists() and "seed: 2" in (tmp_path / ".qvedit-run.yaml").read_text()
    for name in ("00000.png", "00001.png"):  # a frame made with seed 2: now other settings are refused
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(QveditError, match="seed: 2 -> 3"):
        check_or_record(tmp_path, {"seed": 3})


@pytest.mark.long
def test_a_run_that_failed_before_its_first_frame_leaves_nothing_that_blocks_the_corrected_command(tmp_path):
    """num_inference_steps=1 failed after frame 0 was written (NaN), and the corrected command into the same folder
    was refused; any run whose first frame fails (here: guidance steps so large they give NaN) is the same case."""
    run_dir = tmp_path / "run"
    clip = [*CLIP[:1], "io=demo", "max_frames=2", "num_inference_steps=2"]
    first = run_qvedit(*clip, "seed=5", "ttlg=edge", "ttlg.lr=1e30", "ttlg.vgg_weights=random",
                       f"hydra.run.dir={run_dir}")  # NaN at frame 1: only frame 0 is on disk
    assert first.returncode == 2 and "NaN" in first.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in (run_dir / "frames").glob("*.png")) == ["00000.png"]
    corrected = run_qvedit(*clip, "seed=5", f"hydra.run.dir={run_dir}")
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "frames").glob("*.png")) == ["00000.png", "00001.png"]


def test_resume_with_another_ulysses_degree_is_refused_listing_the_key(tmp_path):
    """Context parallelism changes frames in the last bits, so one clip must not mix two degrees;
    CFG parallelism gives the single-process frames, so its degree may change."""
    from hydra import compose, initialize_config_dir

    from qvedit.models.parallel import Team
    from qvedit.run.config_values import frame_settings
    from qvedit.run.job import Job
    from qvedit.run.job_settings import job_settings
    from qvedit.settings.schema import register_schemas

    register_schemas()

    def config(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            return compose("config", overrides=[*CLIP, "max_frames=2", *overrides])

    def edit(cfg):  # on a team of one, whatever the degrees ask for
        return Job.prepare(job_settings(cfg), tmp_path, Team()).run()

    edit(config())
    with pytest.raises(QveditError, match=r"parallel.ulysses_degree: 1 -> 2") as info:
        edit(config("parallel.ulysses_degree=2"))
    assert "\n" not in str(info.value)
    check_or_record(tmp_path / "frames", frame_settings(config("parallel.cfg_degree=2")))
    assert len(list((tmp_path / "frames").glob("*.png"))) == 2


def test_a_manifest_written_before_the_settings_were_tagged_still_resumes(tmp_path):
    """qvedit 0.1 recorded the loaders' _target_ and no parallel.* keys: such a run folder resumes with
    the same settings and is refused with others."""
    from hydra import compose, initialize_config_dir

    from qvedit.run.config_values import frame_settings
    from qvedit.settings.schema import register_schemas

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=CLIP)
    old = {k: v for k, v in frame_settings(cfg).items() if not k.startswith("parallel.") and k != "max_area"}
    old.update({"model._target_": "qvedit.pipeline.load_tiny_pipeline",
                "ttlg._target_": "qvedit.guidance.TTLGSettings"})
    (tmp_path / "00000.png").write_bytes(b"")
    (tmp_path / "00001.png").write_bytes(b"")
    (tmp_path / ".qvedit-run.yaml").write_text(yaml.safe_dump(old, allow_unicode=True))
    check_or_record(tmp_path, frame_settings(cfg))
    with pytest.raises(QveditError, match="parallel.ring_degree: 1 -> 2"):
        check_or_record(tmp_path, {**frame_settings(cfg), "parallel.ring_degree": 2})


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root can mount one); skipped where the machine does not allow it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); test_bad_inputs.py injects the errors")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.xdist_group("temporal")  # on the worker that made the uninterrupted clip
def test_a_full_disk_is_one_line_and_the_same_command_resumes_once_space_is_freed(small_disk, whole):
    run_dir = small_disk / "run"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 80 * 1024))  # room for a few frames
    command = [*CLIP, f"hydra.run.dir={run_dir}"]
    full = run_qvedit(*command)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    (error,) = [line for line in full.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert re.search(r"cannot write \S+ in \S+: No space left on device \([\d.]+ (B|KiB) free there\); free space",
                     error), error
    frames = sorted((run_dir / "frames").glob("*.png"))
    assert 1 <= len(frames) < 9
    for path in frames:  # every frame written is whole
        assert path.read_bytes() == (whole / "frames" / path.name).read_bytes()
    assert not [p for p in run_dir.rglob(PARTIAL_GLOB) if p.is_file()]
    if (run_dir / "metrics.csv").is_file():
        rows = pd.read_csv(run_dir / "metrics.csv")["frame"].tolist()
        assert rows == list(range(1, len(rows) + 1)) and len(rows) <= max(0, len(frames) - 1)
    filler.unlink()
    resumed = run_qvedit(*command)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_clip(whole, run_dir)


# One computation that does not return for minutes on any CPU (Python cannot run a signal handler inside it),
# after saying which frames are finished. "computing" is said once the main thread is inside it (its frame on
# the computation's line, the GIL let go), never before: a signal that came earlier would be taken by Python.
LONG_COMPUTATION = """
import sys, threading, time, torch
from qvedit.core import stopping
stopping.install(message=lambda signum: f"stopped by {signum}; {stopping.kept_text()}")
if sys.argv[1] != "none":
    stopping.finished(sys.argv[1], 3)
matrix = torch.rand(3000, 3000)
main, here = threading.main_thread().ident, {}

def say_when_computing():
    while sys._current_frames()[main].f_lineno != here.get("line"):
        time.sleep(0.001)
    print("computing", flush=True)

threading.Thread(target=say_when_computing, daemon=True).start()
here["line"] = sys._getframe().f_lineno; torch.linalg.matrix_power(matrix, 2**62 - 1)
print("the computation ended", flush=True)
"""


@pytest.mark.parametrize("kept, said", [("frames", "frames 1..3 and their metrics rows are kept in frames"),
                                         ("none", "no frame was finished (frame 0 is the input)")])
def test_sigterm_inside_a_long_computation_stops_it_and_says_what_was_kept(kept, said):
    """The 1 MP condition encoding on the CPU is one such computation: the stop comes without waiting for it."""
    process = subprocess.Popen([sys.executable, "-c", LONG_COMPUTATION, kept], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_stop_signals)
    assert process.stdout.readline() == "computing\n"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate()
    assert process.returncode == 143 and "the computation ended" not in stdout, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"stopped by {int(signal.SIGTERM)}; {said}"


LOST_STOP = """
import os, signal
from qvedit.core import stopping
stopping.install()

class Finalized:
    def __del__(self):  # Ctrl-C taken in here: Python prints its KeyboardInterrupt and drops it
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100000):
            pass

Finalized()
print("went on", flush=True)
try:
    stopping.check()
except KeyboardInterrupt:
    print("stopped between frames", flush=True)
"""


def test_a_stop_whose_exception_was_dropped_in_a_finalizer_still_stops_the_run():
    result = subprocess.run([sys.executable, "-c", LOST_STOP], cwd=REPO, capture_output=True, text=True,
                            preexec_fn=default_stop_signals)
    here = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))  # the worker's, if it fails
    assert "Exception ignored in" in result.stderr and "KeyboardInterrupt" in result.stderr, (result.stderr, here)
    assert result.stdout == "went on\nstopped between frames\n"
