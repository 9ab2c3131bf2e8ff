"""``io=video`` end to end on the tiny model: mp4 in, mp4 + PNG frames + made edges + previews out."""

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_qvedit

RUN = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output", "metrics=none",
       "io=video"]


def make_video(path, frames=5, size=(48, 32), fps=12):
    video = np.zeros((frames, size[1], size[0], 3), np.uint8) + 30
    for t in range(frames):
        video[t, 8:20, 4 + 5 * t:16 + 5 * t] = (220, 60, 40)
    iio.imwrite(path, video, fps=fps, codec="libx264")
    return path


@pytest.mark.long
def test_video_in_video_out(tmp_path):
    from tests.test_video import stream_seconds, with_sound

    clip = with_sound(make_video(tmp_path / "silent.mp4"), tmp_path / "clip.mp4")  # 5 frames at 12 fps, a tone
    run = tmp_path / "run"
    result = run_qvedit(*RUN, f"io.rgb_video={clip}", "max_frames=4", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    frames = sorted((run / "frames").glob("*.png"))
    assert len(frames) == 4
    first = iio.imread(clip, index=0)
    assert np.array_equal(np.asarray(Image.open(frames[0])), first)  # frame 0 as decoded, pixel for pixel
    assert sorted(p.name for p in (run / "edges").glob("*.png")) == [f"{i:05d}.png" for i in range(1, 4)]
    assert not list(run.rglob(".qvedit-lock"))  # frames/ and edges/ were given back at the end, their locks removed
    out = iio.imread(run / "output.mp4")
    assert out.shape == (4, 32, 48, 3)  # the frames made, at the input's rate and for their time, with its sound
    assert abs(iio.immeta(run / "output.mp4")["fps"] - 12) < 0.01
    assert stream_seconds(run / "output.mp4", "v") == (4, pytest.approx(4 / 12, abs=1e-3))
    assert stream_seconds(run / "output.mp4", "a")[1] == pytest.approx(4 / 12, abs=0.03)
    assert (run / "preview.png").is_file() and (run / "preview.gif").is_file()
    assert (f"  video: {run / 'output.mp4'} (4 frames at 12 fps, 0.333 s; sound of io.rgb_video, cut to these "
            "frames)") in result.stdout.splitlines()  # the summary names the mp4 ...
    assert '<a href="output.mp4">output.mp4</a>' in (run / "report.html").read_text()  # ... and so does the page


@pytest.mark.long
def test_edge_video_of_another_size_and_frames_not_kept(tmp_path):
    (tmp_path / "inputs").mkdir()  # not the folder io.out_video writes to: qvedit never writes beside an input
    clip = make_video(tmp_path / "inputs" / "clip.mp4", frames=2)
    edges = make_video(tmp_path / "inputs" / "edges.mp4", frames=3, size=(96, 64))
    run = tmp_path / "run"
    result = run_qvedit(*RUN, f"io.rgb_video={clip}", f"io.edge_video={edges}", "io.keep_frames=false",
                        f"io.out_video={tmp_path / 'edited.mp4'}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert iio.imread(tmp_path / "edited.mp4").shape == (4, 32, 48, 3)  # T = 3 edge frames + 1
    assert not list((run / "frames").glob("*.png")) and not (run / "edges").exists()
    assert f"-> {tmp_path / 'edited.mp4'} (PNG frames deleted: io.keep_frames=false)" in result.stdout
