"""Reading and writing frames: conversion to 8-bit RGB, ordering, filtering, resize, errors."""

import numpy as np
import pytest
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import read_rgb8, to_rgb8
from qvedit.io.frames import FrameFolders, FrameWriter, list_edge_frames


def test_natural_order_skips_hidden_and_non_images(tmp_path):
    for name in ["10.png", "2.png", "1.jpg", ".3.png", "notes.txt", "frame_11.PNG"]:
        if name.endswith("txt"):
            (tmp_path / name).write_text("hi")
        else:
            Image.new("L", (4, 4)).save(tmp_path / name, format="JPEG" if name.endswith("jpg") else "PNG")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_edge_frames(tmp_path)] == ["1.jpg", "2.png", "10.png", "frame_11.PNG"]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_modes_become_8bit_rgb(mode):
    image = Image.new("RGB", (5, 3), (200, 100, 50)).convert(mode)
    out = to_rgb8(image)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = np.asarray(read_rgb8(tmp_path / "g16.png"))
    assert out[0, :, 0].tolist() == [0, 100, 255] and (out[..., 0] == out[..., 2]).all()


def test_rgba_keeps_colour_drops_alpha():
    image = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(to_rgb8(image))[0, 0].tolist() == [10, 20, 30]


def test_edge_frames_are_resized_to_the_init_size(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "init.png")
    (tmp_path / "e").mkdir()
    Image.new("L", (80, 60), 255).save(tmp_path / "e" / "1.png")
    for resize in ("area", "nearest"):
        edge = FrameFolders(str(tmp_path / "init.png"), str(tmp_path / "e"), resize=resize).edge_frame(0, (40, 30))
        assert edge.size == (40, 30) and edge.mode == "RGB" and np.asarray(edge).min() == 255


@pytest.mark.parametrize("case, message", [
    ("no_init_key", "io.init_frame is not set"),
    ("no_keys", "io.init_frame and io.edge_frames_dir are not set"),
    ("missing_init", "init frame not found"),
    ("missing_dir", "edge frame folder not found"),
    ("dir_is_file", "is not a folder"),
    ("empty_dir", "no edge frames"),
    ("only_hidden", "no edge frames"),
    ("text_as_png", "cannot read image .*bad.png"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, case, message):
    init = tmp_path / "init.png"
    Image.new("RGB", (8, 8)).save(init)
    edges = tmp_path / "edges"
    edges.mkdir()
    args = {"init_frame": str(init), "edge_frames_dir": str(edges)}
    Image.new("L", (8, 8)).save(edges / "1.png")
    if case == "no_init_key":
        args["init_frame"] = None
    elif case == "no_keys":
        args = {"init_frame": None, "edge_frames_dir": None}
    elif case == "missing_init":
        args["init_frame"] = str(tmp_path / "nope.png")
    elif case == "missing_dir":
        args["edge_frames_dir"] = str(tmp_path / "nope")
    elif case == "dir_is_file":
        args["edge_frames_dir"] = str(init)
    elif case == "empty_dir":
        (edges / "1.png").unlink()
    elif case == "only_hidden":
        (edges / "1.png").rename(edges / ".1.png")
    elif case == "text_as_png":
        (edges / "bad.png").write_text("not an image")
    with pytest.raises(QveditError, match=message) as info:
        FrameFolders(**args)
    assert "\n" not in str(info.value)


def test_writer_writes_whole_files_only(tmp_path):
    writer = FrameWriter(tmp_path / "out")
    path = writer.write(3, Image.new("RGB", (4, 4), (1, 2, 3)))
    assert path.name == "00003.png" and sorted(p.name for p in (tmp_path / "out").iterdir()) == [".qvedit-lock", "00003.png"]
    assert np.asarray(Image.open(path))[0, 0].tolist() == [1, 2, 3]


def test_writer_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(QveditError, match="is a file"):
        FrameWriter(tmp_path / "out")


def test_a_folder_or_file_in_the_way_of_a_write_is_one_line(tmp_path):
    from qvedit.core.files import write_text_atomic

    (tmp_path / "report.html").mkdir()  # a folder with the name of a file qvedit writes
    with pytest.raises(QveditError, match="cannot write .*report.html: a folder of that name is there") as info:
        write_text_atomic(tmp_path / "report.html", "<html>")
    (tmp_path / "unguided").write_text("a file where a folder must be")
    with pytest.raises(QveditError, match="unguided is a file where qvedit needs a folder") as second:
        write_text_atomic(tmp_path / "unguided" / "metrics.csv", "frame\n")
    assert "\n" not in str(info.value) + str(second.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "unguided"]  # no partial file left


TAKER = """import sys; from pathlib import Path; from qvedit.core import locks
locks.hold(Path(sys.argv[1])); print("held", flush=True)
sys.stdin.readline(); locks.release_all(); print("released", flush=True)"""


def test_a_released_lock_file_is_removed_and_never_lets_two_writers_in(tmp_path, monkeypatch):
    """The lock file goes when its holder lets go; a process that opened the file just before it went and locks
    it just after takes the path's new file instead, held by a third: it is refused, not let in beside it."""
    import subprocess
    import sys

    from qvedit.core import locks
    from tests.conftest import REPO

    def taker():
        process = subprocess.Popen([sys.executable, "-c", TAKER, str(tmp_path)], cwd=REPO, text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == "held"
        return process

    first = taker()
    lock = tmp_path / locks.LOCK_FILE
    assert lock.is_file()
    real_flock, third = locks.fcntl.flock, []

    def flock_after_the_first_lets_go(fd, operation):  # between this process's open and its flock:
        if not third:
            first.stdin.write("\n")
            first.stdin.flush()
            assert first.stdout.readline().strip() == "released" and not lock.exists()  # removed, then unlocked
            third.append(taker())  # makes a new lock file and holds it
        return real_flock(fd, operation)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_the_first_lets_go)
    try:
        with pytest.raises(QveditError, match="in use by process") as info:
            locks.hold(tmp_path)
        assert f"process {third[0].pid}" in str(info.value)
    finally:
        for process in (first, *third):
            process.communicate("\n")
    assert not lock.exists() and tmp_path not in locks._held  # the third let go too: no file left
    locks.hold(tmp_path)
    assert lock.is_file()
    locks.release_all()
    assert not lock.exists()
