"""The bad-input battery: each case ends in a clear one-line error or is handled, never a traceback.

Cases run in-process through ``qvedit.main.run`` (the model loads once); ``tests/test_cli.py``
shows that the command line turns a QveditError into one ``qvedit: error:`` line with exit code 2.
"""

from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from qvedit.config import register_schemas
from qvedit.errors import QveditError
from qvedit.main import run
from tests.conftest import REPO

register_schemas()
TINY = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output", "metrics=none"]


def rgb(size=(40, 24), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def clip(root: Path, init: Image.Image = None, edges=3, edge_size=None, names=None) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    init = init if init is not None else rgb()
    init.save(root / "init.png")
    (root / "edges").mkdir(exist_ok=True)
    size = edge_size or (init.size if init.size else (40, 24))
    for k, name in enumerate(names or [f"{k}.png" for k in range(1, edges + 1)]):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(
            root / "edges" / name)
    return root / "init.png", root / "edges"


def video(path: Path, frames: int) -> Path:
    if frames == 0:  # no frames: ffmpeg leaves an mp4 without a video stream
        writer = imageio_ffmpeg.write_frames(str(path), (40, 24), fps=10, ffmpeg_log_level="quiet")
        writer.send(None)
        writer.close()
    else:
        iio.imwrite(path, np.zeros((frames, 24, 40, 3), np.uint8) + 80, fps=10, codec="libx264")
    return path


def execute(tmp_path: Path, overrides: list[str]) -> Path:
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=TINY + overrides)
    return run(cfg, tmp_path / "run")


def frames_io(init, edges):
    return [f"io.init_frame='{init}'", f"io.edge_frames_dir='{edges}'"]  # quoted: paths may hold spaces


# Each case: (name, setup(tmp) -> overrides, expected error fragment or None when it is handled).
def empty_edges(t):
    init, edges = clip(t, edges=0)
    return frames_io(init, edges)


def only_hidden(t):
    return frames_io(*clip(t, names=[".1.png", ".2.png"]))


def text_as_png(t):
    init, edges = clip(t)
    (edges / "2.png").write_text("hello")
    return frames_io(init, edges)


def truncated_png(t):
    init, edges = clip(t)
    data = (edges / "2.png").read_bytes()
    (edges / "2.png").write_bytes(data[: len(data) // 2])
    return frames_io(init, edges)


def init_mode(mode):
    def setup(t):
        image = rgb()
        if mode == "I;16":
            image = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257))
        else:
            image = image.convert(mode)
        return frames_io(*clip(t, init=image))
    return setup


CASES = [
    ("no inputs", lambda t: [], "io.init_frame and io.edge_frames_dir are not set"),
    ("missing init frame", lambda t: [f"io.init_frame={t / 'nope.png'}", f"io.edge_frames_dir={t}"],
     "init frame not found"),
    ("missing edge folder", lambda t: frames_io(clip(t)[0], t / "nope"), "edge frame folder not found"),
    ("edge folder is a file", lambda t: frames_io(clip(t)[0], clip(t)[0]), "is not a folder"),
    ("empty edge folder", empty_edges, "no edge frames"),
    ("only hidden files", only_hidden, "no edge frames"),
    ("text file named .png", text_as_png, "cannot read image"),
    ("truncated png mid-sequence", truncated_png, "2.png"),
    ("missing video", lambda t: ["io=video", f"io.rgb_video={t / 'nope.mp4'}"], "not found"),
    ("zero-frame video", lambda t: ["io=video", f"io.rgb_video={video(t / 'zero.mp4', 0)}"], "no video frames"),
    ("corrupt mp4", lambda t: ["io=video", f"io.rgb_video={t / 'bad.mp4'}"], "cannot decode video|damaged"),
    ("grayscale init", init_mode("L"), None),
    ("RGBA init", init_mode("RGBA"), None),
    ("16-bit init", init_mode("I;16"), None),
    ("palette init", init_mode("P"), None),
    ("edges larger than init", lambda t: frames_io(*clip(t, edge_size=(80, 48))), None),
    ("edges smaller than init", lambda t: frames_io(*clip(t, edge_size=(20, 12))), None),
    ("1x1 images", lambda t: frames_io(*clip(t, init=rgb((1, 1)), edge_size=(1, 1))), None),
    ("spaces and non-ASCII in the path", lambda t: frames_io(*clip(t / "mes vidéos" / "clip 1")), None),
    ("max_frames 0", lambda t: frames_io(*clip(t)) + ["max_frames=0"], "max_frames=0 must be >= 1"),
    ("max_frames 1", lambda t: frames_io(*clip(t)) + ["max_frames=1"], None),
    ("max_frames beyond the edges", lambda t: frames_io(*clip(t)) + ["max_frames=10"], "at most 4 output frames"),
    ("output folder is a file", lambda t: frames_io(*clip(t)) + [f"io.out_frames_dir={clip(t)[0]}"], "is a file"),
    ("unwritable output folder", lambda t: frames_io(*clip(t)) + ["io.out_frames_dir=/sys/qvedit-frames"],
     "cannot create output folder"),
    ("NaN in the latents", lambda t: frames_io(*clip(t)) + ["ttlg=edge", "ttlg.lr=nan", "ttlg.vgg_weights=random"],
     "NaN"),
]


@pytest.mark.parametrize("name, setup, error", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tiny_pipe, tmp_path, name, setup, error):
    if name == "corrupt mp4":
        data = video(tmp_path / "good.mp4", 5).read_bytes()
        (tmp_path / "bad.mp4").write_bytes(data[: len(data) // 2])
    overrides = setup(tmp_path)
    if error is None:
        frames = execute(tmp_path, overrides)
        init = next(o.split("=", 1)[1].strip("'") for o in overrides if o.startswith("io.init_frame="))
        written = sorted(frames.glob("*.png"))
        expected = 1 if "max_frames=1" in overrides else 4
        assert len(written) == expected
        source = Image.open(init)
        assert Image.open(written[-1]).size == source.size
        assert np.asarray(Image.open(written[0])).shape == (source.size[1], source.size[0], 3)
    else:
        with pytest.raises(QveditError, match=error) as info:
            execute(tmp_path, overrides)
        assert "\n" not in str(info.value)
        frames_dir = tmp_path / "run" / "frames"
        if name == "truncated png mid-sequence":  # frames before the bad one are kept
            assert sorted(p.name for p in frames_dir.glob("*.png")) == ["00000.png", "00001.png"]


def test_the_battery_has_at_least_20_cases():
    assert len(CASES) >= 20
