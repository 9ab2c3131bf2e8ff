"""schedule=segments: keyframes first, then the segments between them, in this process or on Ray workers."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from qvedit.core.errors import QveditError
from qvedit.core.files import PARTIAL_GLOB
from qvedit.io.layout import holds_nothing_of_its_own
from qvedit.run.frame_outputs import check_or_record
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.schedule import ScheduleSettings
from tests.conftest import ONE_THREAD, REPO, SAFETY_TIMEOUT_S, SEGMENTS, run_qvedit


def plan(total, every=4, source="first", meet=1, first_frame_image=False):
    settings = ScheduleSettings(mode="segments", keyframe_every=every, keyframes_from=source, meet_frames=meet)
    return SegmentPlan(settings, total, first_frame_image)


def test_keyframes_come_first_and_each_segment_is_a_chain_that_meets_the_next_keyframe():
    clip = plan(11)  # frames 0..10: keyframes 4 and 8; segments 1-3, 5-7 and 9-10
    assert clip.keyframes == [4, 8]
    assert [list(clip.segment_frames(j)) for j in range(clip.segments)] == [[1, 2, 3], [5, 6, 7], [9, 10]]
    made_from = {i: (r.follows, r.third, r.keyframe) for i in range(1, 11) if (r := clip.recipe(i))}
    assert made_from == {1: (0, None, False), 2: (1, None, False), 3: (2, 4, False), 4: (0, None, True),
                         5: (4, None, False), 6: (5, None, False), 7: (6, 8, False), 8: (0, None, True),
                         9: (8, None, False), 10: (9, None, False)}  # the last segment has no keyframe to meet
    chained = plan(11, source="previous_keyframe", meet=0)  # image=[edge, previous keyframe, frame 0]
    assert [(chained.recipe(k).follows, chained.recipe(k).third) for k in (4, 8)] == [(0, None), (4, 0)]
    anchored = plan(11, meet=0, first_frame_image=True)  # frame 0 as image 3 of the segments' frames
    assert anchored.recipe(3).third == 0 and anchored.recipe(4).third is None


def test_a_model_taking_four_images_gets_frame_0_beside_the_next_keyframe():
    """Qwen-Image 2.1 takes up to 10 condition images: anchor.first_frame_image and meet_frames go together there
    (image 3 the next keyframe, image 4 frame 0); 2509's family, three at most, is refused the pair."""
    settings = ScheduleSettings(mode="segments", keyframe_every=4, meet_frames=1)
    four = SegmentPlan(settings, 11, first_frame_image=True, max_images=4)
    assert [four.recipe(i).anchors for i in (1, 2, 3, 4)] == [(0,), (0,), (4, 0), ()]
    assert four.recipe(3).depends_on == (2, 4)
    assert settings.conflict(11, None, True, max_images=10) is None
    assert "at most 3" in settings.conflict(11, None, True, max_images=3)


@pytest.mark.long
def test_segments_on_qwen_image_21_run_with_frame_0_as_a_fourth_image(tmp_path, monkeypatch):
    """The segment schedule in this process on model=tiny_21, frame 0 edited first and flow guidance on, frame 0 as
    an image of every call beside the next keyframe: the meeting frames' calls take four images, and the run
    publishes its frames, metrics (hops, seams) and report as on 2509's family."""
    from qvedit.run.clip_editor import FrameMaker
    from qvedit.run.job import run

    counts = {}
    make = FrameMaker.make

    def counting(self, index, images, *args, **kwargs):
        counts[index] = len(images(None))
        return make(self, index, images, *args, **kwargs)

    monkeypatch.setattr(FrameMaker, "make", counting)
    run(compose("model=tiny_21", "anchor=first_frame"), tmp_path)
    assert counts == {3: 2, 6: 2, 1: 3, 2: 4, 4: 3, 5: 4, 7: 3}  # keyframes 3, 6: [edge, frame 0]
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["frame"].tolist() == list(range(1, 8)) and rows["hops"].tolist() == [1, 2, 1, 2, 3, 1, 2]
    assert len(frame_bytes(tmp_path)) == 8 and (tmp_path / "report.html").is_file()
    assert (tmp_path / "first_frame" / "candidate_00.png").is_file()


def test_hops_count_the_edits_from_frame_0_and_stay_within_a_segment_of_the_keyframes_own():
    first, chained = plan(40, every=8), plan(40, every=8, source="previous_keyframe")
    assert [first.hops(i) for i in (1, 7, 8, 9, 15, 16, 39)] == [1, 7, 1, 2, 8, 1, 8]
    assert [chained.hops(i) for i in (8, 9, 16, 23, 32, 39)] == [1, 2, 2, 9, 4, 11]
    for clip in (first, chained):
        for index in range(1, 40):
            keyframe = index - index % 8
            assert clip.hops(index) <= 8 + (clip.hops(keyframe) if keyframe else 0)
    assert [AnchorSettings().hops(i) for i in (1, 37)] == [1, 37]  # a chain: the frame index
    assert [AnchorSettings(every=8).hops(i) for i in (7, 8, 13, 16)] == [7, 1, 6, 1]  # anchor.every restarts it


def test_a_resumed_run_keeps_the_finished_frames_whose_own_inputs_are_kept():
    clip = plan(11)
    assert clip.kept({4, 8, 1, 2, 5, 9}) == {4, 8, 1, 2, 5, 9}  # finished in any order: all kept
    assert clip.kept({8, 1, 2, 3, 5, 6}) == {8, 1, 2}  # keyframe 4 is made again: 3 met it, 5 and 6 follow it
    assert plan(11, source="previous_keyframe").kept({8, 9}) == set()  # keyframe 8 was made from keyframe 4


def schedule_rounds(clip, workers):
    """Hand a clip's frames to ``workers`` that each make one frame a round: [[frame of each worker] per round]."""
    from qvedit.run.schedule.driver import TaskQueue

    queue, rounds, last = TaskQueue(clip, set(), seams=False), [], {}
    while queue:
        taken = {w: task for w in range(workers) if (task := queue.take(last.get(w, -1) + 1, workers)) is not None}
        for worker, (_, index) in taken.items():
            queue.finished(index)
            last[worker] = index
        rounds.append([taken[w][1] if w in taken else None for w in range(workers)])
    return rounds


def test_workers_go_forward_through_the_clip_and_no_worker_waits_for_the_last_segment_at_the_end():
    rounds = schedule_rounds(plan(48, every=16, meet=2), 2)  # keyframes 16 and 32, then 3 segments of 15 frames
    assert rounds[0] == [16, 32] and len(rounds) == 1 + 23  # 45 frames on 2 workers (whole segments: 1 + 30)
    rounds = schedule_rounds(plan(401, every=16, meet=2), 4)  # 25 segments: far more work than any one has left
    assert len(rounds) == -(-400 // 4)  # every worker busy every round
    for worker in range(4):
        made = [r[worker] for r in rounds[7:] if r[worker] is not None]  # after the keyframes
        backward = sum(b < a for a, b in zip(made, made[1:]))
        assert backward <= 3, made  # forward through the clip (a video decodes as a stream), bar a few at the end


def test_a_metrics_csv_written_before_the_hops_column_resumes_with_its_rows(tmp_path):
    from qvedit.scoring.frame_metrics import complete_rows

    path = tmp_path / "metrics.csv"
    path.write_text("frame,edge_loss,seconds\n1,0.5,2.0\n2,0.4,2.1\n")  # an earlier qvedit's chain
    columns = ["frame", "hops", "edge_loss", "seconds"]
    assert complete_rows(path, columns, AnchorSettings().hops) == [["1", "1", "0.5", "2.0"], ["2", "2", "0.4", "2.1"]]
    assert complete_rows(path, columns) == []  # without the hops of its frames: made again, as any other columns


def test_a_stopped_segment_schedule_says_how_many_frames_it_keeps(tmp_path):
    from qvedit.core import stopping

    before = dict(stopping._kept)  # what other runs in this process left
    stopping._kept.clear()
    stopping.finished_text(tmp_path, "5 of the 47 frames")
    try:
        assert stopping.kept_text() == f"5 of the 47 frames and their metrics rows are kept in {tmp_path}"
    finally:
        stopping._kept.clear()
        stopping._kept.update(before)


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from qvedit.settings.schema import register_schemas

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return hydra_compose("config", overrides=[*SEGMENTS, *overrides])


BAD = {  # overrides -> the start of the one line that refuses them
    "schedule.keyframe_every=1": "schedule.keyframe_every=1 is out of range: use an integer >= 2",
    "schedule.keyframe_every=8": "schedule.keyframe_every=8 but the clip has 8 frames (0..7): no keyframe",
    "schedule.workers=0": "schedule.workers=0 is out of range: use an integer >= 1",
    "schedule.meet_frames=3": "schedule.meet_frames=3 but a segment has 2 frames",
    "anchor=keyframes": "anchor.every=8 with schedule=segments: the keyframes already bound every chain",
    "anchor=first_frame": "anchor.first_frame_image with schedule=segments and schedule.meet_frames=1",
    "parallel.cfg_degree=2": "schedule=segments with parallel.* degrees (2 processes a frame)",
    "schedule=chain schedule.workers=2": "schedule.workers=2 with schedule=chain",
    "schedule.ray_address=127.0.0.1:1": "schedule.ray_address=127.0.0.1:1 with schedule.workers=1",
    "schedule.workers=2 device=cuda": "schedule.workers=2 asks for 2 GPUs (one per worker) but the local Ray has 1",
    f"schedule.workers={os.cpu_count() + 1}": f"schedule.workers={os.cpu_count() + 1} CPU workers (one core each) "
                                              f"but this machine has {os.cpu_count()} cores",
    "schedule.workers=2 schedule.ray_address=127.0.0.1:1": "schedule.ray_address=127.0.0.1:1: nothing answers there",
}


@pytest.mark.parametrize("overrides", list(BAD))
def test_a_schedule_that_cannot_run_is_one_line_before_anything_is_written(overrides, tmp_path, monkeypatch):
    import torch

    from qvedit.run.job import run

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a machine with one GPU, whatever this one has
    cfg = compose(*overrides.split())
    started = time.monotonic()
    with pytest.raises(QveditError) as info:
        run(cfg, tmp_path)
    message = str(info.value)
    assert message.startswith(BAD[overrides]) and "\n" not in message, message
    assert time.monotonic() - started < 60  # an address nothing answers at: seconds, not a hang
    assert holds_nothing_of_its_own(tmp_path) and not list(tmp_path.rglob("*.png"))


def test_without_ray_the_extra_is_named(tmp_path, monkeypatch):
    from qvedit.run.job import run

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else found(name, *a))
    with pytest.raises(QveditError, match=r"runs the segments on Ray, which is not installed: pip install -e "
                                          r"'\.\[distributed\]'"):
        run(compose("schedule.workers=2"), tmp_path)
    assert holds_nothing_of_its_own(tmp_path)


@pytest.mark.long
def test_the_command_line_refuses_in_one_line_with_exit_2_and_leaves_no_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = run_qvedit(*SEGMENTS, "schedule.workers=2", "schedule.ray_address=127.0.0.1:1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "qvedit: error: schedule.ray_address=127.0.0.1:1: nothing answers there")
    assert not run_dir.exists()


def test_the_frame_changing_schedule_keys_are_held_on_resume_and_the_workers_are_not(tmp_path):
    from qvedit.run.config_values import frame_settings

    settings = frame_settings(compose())
    assert {"schedule.mode", "schedule.keyframe_every", "schedule.keyframes_from", "schedule.meet_frames"} <= set(
        settings) and not {"schedule.workers", "schedule.ray_address"} & set(settings)
    check_or_record(tmp_path, settings)
    for name in ("00000.png", "00001.png"):  # frames made (frame 0 alone would be a run that made none)
        (tmp_path / name).write_bytes(b"")
    check_or_record(tmp_path, frame_settings(compose("schedule.workers=2")))  # where frames are made may change
    with pytest.raises(QveditError, match="schedule.keyframe_every: 3 -> 4"):
        check_or_record(tmp_path, frame_settings(compose("schedule.keyframe_every=4")))
    with pytest.raises(QveditError, match="schedule.mode: 'segments' -> 'chain'"):
        check_or_record(tmp_path, frame_settings(compose("schedule=chain")))


def frame_bytes(run_dir):
    return {p.name: p.read_bytes() for p in sorted((run_dir / "frames").glob("*.png"))}


@pytest.fixture
def segments(made):
    """The segment schedule made in one process (``SEGMENTS``), once per session. Read only."""
    folder, (result,) = made("segments")
    return folder, result


@pytest.mark.xdist_group("segments")
def test_segments_mark_their_hops_and_seams_in_the_metrics_and_the_reports(segments):
    folder, result = segments
    rows = pd.read_csv(folder / "metrics.csv")
    assert rows.columns[:3].tolist() == ["frame", "hops", "edge_loss"]
    assert rows["frame"].tolist() == list(range(1, 8))  # in frame order, though made keyframes first
    assert rows["hops"].tolist() == [1, 2, 1, 2, 3, 1, 2]
    assert rows["warp_error"].notna().all()  # the keyframes' too: against the frame before them, the seam
    assert len(frame_bytes(folder)) == 8 and not list((folder / "frames").glob(PARTIAL_GLOB))
    said = result.stdout + result.stderr
    assert "schedule=segments: keyframes 3, 6 (every 3, each from frame 0); 3 segments" in said
    assert re.search(r"segments: keyframes 3, 6, hops at most 3; warp_error at the 2 seams .* [\d.e-]+ vs "
                     r"[\d.e-]+ inside the segments", said)
    report = (folder / "report.html").read_text()
    assert report.count('<tr class="keyframe">') == 2 and report.count('<tr class="seam">') == 2
    assert (folder / "drift.png").is_file()


def start(run_dir, *extra, log=subprocess.DEVNULL):
    """``python -m qvedit SEGMENTS`` in the background; its log (stdout) to ``log``, errors to a pipe."""
    return subprocess.Popen([sys.executable, "-m", "qvedit", *SEGMENTS, *extra, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=log, stderr=subprocess.PIPE if log == subprocess.DEVNULL else subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD))


def wait_until(done, process, what):
    deadline = time.monotonic() + SAFETY_TIMEOUT_S
    while not done():
        assert process.poll() is None, f"the run ended before {what}: {(process.stderr or process.stdout).read()}"
        assert time.monotonic() < deadline, f"no {what} in {SAFETY_TIMEOUT_S} s: the run hangs"
        time.sleep(0.05)


@pytest.mark.long
@pytest.mark.xdist_group("segments")
def test_a_driver_killed_mid_clip_resumes_keeping_every_finished_frame_of_every_segment(tmp_path, segments):
    whole, _ = segments
    run_dir = tmp_path / "run"
    process = start(run_dir)
    frames = run_dir / "frames"
    wait_until(lambda: (frames / "00001.png").exists(), process, "frame 1")  # keyframes 3, 6, frame 7, then 1, 2 ...
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = set(pd.read_csv(run_dir / "metrics.csv")["frame"])  # on disk with their rows
    assert {3, 6, 7, 1} <= finished and 5 not in finished  # not 1..N: keyframes and frames of two segments
    written = {index: (frames / f"{index:05d}.png").stat().st_mtime_ns for index in finished}

    result = run_qvedit(*SEGMENTS, f"hydra.run.dir={run_dir}", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming: {len(finished)} of the 7 frames are already in {frames}" in result.stdout + result.stderr
    assert {i: (frames / f"{i:05d}.png").stat().st_mtime_ns for i in finished} == written  # none made again
    assert frame_bytes(run_dir) == frame_bytes(whole)
    assert pd.read_csv(run_dir / "metrics.csv")["frame"].tolist() == list(range(1, 8))
    assert not list(frames.glob(PARTIAL_GLOB))


@pytest.mark.long
@pytest.mark.xdist_group("segments")
def test_two_ray_workers_make_the_same_frames_and_a_worker_killed_mid_clip_loses_only_its_frame(tmp_path, segments):
    whole, _ = segments
    run_dir = tmp_path / "ray"
    process = start(run_dir, "schedule.workers=2", log=subprocess.PIPE)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()

    def workers():
        return dict(re.findall(r"Ray worker (\d) is ready on .* \(process (\d+)\)", "".join(lines)))

    wait_until(lambda: len(workers()) == 2 and (run_dir / "frames" / "00003.png").exists(), process,
               "two Ray workers and keyframe 3")
    pids = workers()
    os.kill(int(pids["0"]), signal.SIGKILL)  # mid-clip: its task goes to worker 1, Ray starts it again
    assert process.wait(timeout=SAFETY_TIMEOUT_S) == 0, "".join(lines)[-3000:]
    reader.join()
    said = "".join(lines)
    assert re.search(r"Ray worker 0 was lost while making frame \d", said), said[-3000:]
    assert len(re.findall(r"frame \d done in", said)) == 7  # one line per frame, for the whole clip
    assert frame_bytes(run_dir) == frame_bytes(whole)  # byte for byte the frames of one worker in one process
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows["frame"].tolist() == list(range(1, 8)) and rows["warp_error"].notna().all()
    assert not list((run_dir / "frames").glob(PARTIAL_GLOB))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids.values()):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values()), "a Ray worker outlived the run"
