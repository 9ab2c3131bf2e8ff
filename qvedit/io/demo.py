"""A synthetic demo clip, made in code so the demo needs no files: a red ball rolling past a blue box.

``demo_clip(...)`` writes ``init.png``, ``edges/00001.png ...`` (the project's own Sobel edges of
frames 1..T-1) and ``source/00000.png ...`` (the scene's frames, for optical flow) the first time,
then serves them like any frame folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from qvedit.errors import QveditError
from qvedit.files import atomic_folder, cache_dir
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.images import to_tensor
from qvedit.io.frames import FrameFolders

DEMO_FOLDER = "demo-clip"  # in the cache folder; conf/io/demo.yaml names it too
DEMO_SIZE = (64, 64)  # (W, H)
DEMO_FRAMES = 9  # frame 0 + 8 edge frames


def demo_frame(t: int, size: tuple[int, int] = DEMO_SIZE) -> np.ndarray:
    """Frame t of the scene as (H, W, 3) uint8."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([0.45 + 0.3 * y / height, 0.65 + 0.2 * y / height, np.full_like(y, 0.95)], axis=-1)
    ground = np.stack([0.25 + 0.1 * x / width, np.full_like(x, 0.55), np.full_like(x, 0.2)], axis=-1)
    image = np.where((y > 0.62 * height)[..., None], ground, sky)
    box_x = 0.62 * width - 1.0 * t
    box = (abs(x - box_x) < 0.12 * width) & (abs(y - 0.5 * height) < 0.14 * height)
    image[box] = (0.2, 0.3, 0.85)
    ball_x, ball_y = 0.2 * width + 3.0 * t, 0.55 * height
    ball = (x - ball_x) ** 2 + (y - ball_y) ** 2 < (0.15 * width) ** 2
    image[ball] = (0.9, 0.15, 0.1)
    return (image * 255).round().astype(np.uint8)


def write_demo_clip(folder: Path) -> None:
    """Write the clip into ``folder`` atomically (a half-written clip never appears)."""
    with atomic_folder(folder, complete="init.png") as staging:
        (staging / "edges").mkdir()
        Image.fromarray(demo_frame(0)).save(staging / "init.png")
        for t in range(1, DEMO_FRAMES):
            edges = sobel_edges(to_tensor(demo_frame(t)))
            Image.fromarray(edges_to_uint8(edges[0, 0])).save(staging / "edges" / f"{t:05d}.png")
    write_source_frames(folder / "source")


def write_source_frames(folder: Path) -> None:
    """The scene's frames 0..T-1 (the source the edge maps were made from, for optical flow)."""
    if (folder / f"{DEMO_FRAMES - 1:05d}.png").is_file():
        return
    with atomic_folder(folder, complete=f"{DEMO_FRAMES - 1:05d}.png") as staging:
        for t in range(DEMO_FRAMES):
            Image.fromarray(demo_frame(t)).save(staging / f"{t:05d}.png")


def demo_clip(init_frame: str, edge_frames_dir: str, resize: str = "area",
              source_frames_dir: str | None = None) -> FrameFolders:
    """The ``io=demo`` source: the demo clip, made in the cache folder on first use.

    The clip is only ever written to ``<cache>/demo-clip`` (where conf/io/demo.yaml points); an
    ``io.init_frame`` elsewhere must already exist, so a typo never fills a new folder with a clip.
    """
    init = Path(init_frame).expanduser()
    home = cache_dir() / DEMO_FOLDER
    if not init.is_file():
        if init.parent.resolve() != home.resolve():
            raise QveditError(f"io.init_frame={init} does not exist, and io=demo makes its clip only in {home}: "
                              "leave io.init_frame unset for the demo, or use io=frames for your own frames")
        write_demo_clip(home)
    source = Path(source_frames_dir).expanduser() if source_frames_dir else None
    if source is not None and source.resolve() == (home / "source").resolve():
        write_source_frames(source)  # a cache made before the demo had source frames
    return FrameFolders(str(init), str(Path(edge_frames_dir).expanduser()), resize,
                        str(source) if source is not None else None)
