"""Synthetic demo clips, made in code so the demos need no files.

- ``io=demo``: a red ball rolling past a blue box, 9 frames.
- ``io=demo_long``: a camera panning along a landscape of hills, houses and trees while the light slowly
  turns to sunset (darker and warmer), ``io.length`` frames (48 by default): long enough for drift to show,
  with a real colour change in the source that drift measures must not count.
- ``io=shapes``: a synthetic clip of shapes (``qvedit.io.shapes``, what the toy model learns from) drawn from
  ``io.clip_seed``; seeds from 1,000,000 on are never shown to the toy model in training.

``demo_clip(...)`` writes ``init.png``, ``edges/00001.png ...`` (the project's own Sobel edges of
frames 1..T-1) and ``source/00000.png ...`` (the scene's frames, for optical flow) the first time,
then serves them like any frame folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_folder, cache_dir
from qvedit.core.images import to_tensor
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.io.frames import FrameFolders
from qvedit.io.shapes import ToyScene

DEMO_FOLDER = "demo-clip"  # in the cache folder; conf/io/demo.yaml names it too
DEMO_SIZE = (64, 64)  # (W, H)
DEMO_FRAMES = 9  # frame 0 + 8 edge frames
LONG_DEMO_FOLDER = "demo-long-{length}"  # in the cache folder; conf/io/demo_long.yaml names it too
SHAPES_FOLDER = "shapes-{seed}-{length}"  # in the cache folder; conf/io/shapes.yaml names it too


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


def long_demo_frame(t: int, length: int, size: tuple[int, int] = DEMO_SIZE) -> np.ndarray:
    """Frame t of ``length`` of the panning sunset scene as (H, W, 3) uint8: the view moves right by 0.75 pixel a
    frame, and the light goes from midday to sunset over the clip (about 35% darker, shifted to orange)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x = x + 0.75 * t  # the camera pans right: the landscape moves left
    phase = t / max(1, length - 1)
    sky = np.stack([0.45 + 0.3 * y / height, 0.65 + 0.2 * y / height, np.full_like(y, 0.95)], axis=-1)
    hill = 0.6 * height + 0.08 * height * np.sin(x / width * 2 * np.pi * 0.8) + 0.05 * height * np.sin(x / 7.0)
    image = np.where((y > hill)[..., None], np.stack([0.2 + 0.1 * np.sin(x / 9.0), 0.55 + 0.1 * np.sin(x / 13.0),
                                                      np.full_like(x, 0.2)], axis=-1), sky)
    spacing = 0.55 * width
    house_x = (x % spacing) - 0.25 * spacing
    house = (abs(house_x) < 0.09 * width) & (y > hill - 0.16 * height) & (y < hill + 0.02 * height)
    roof = (abs(house_x) < 0.12 * width - (hill - 0.16 * height - y)) & (y <= hill - 0.16 * height) & \
        (y > hill - 0.28 * height)
    image[house] = (0.85, 0.8, 0.7)
    image[roof] = (0.7, 0.2, 0.15)
    tree_x = ((x + 0.3 * spacing) % (0.37 * width)) - 0.1 * width
    tree = (tree_x ** 2 / (0.05 * width) ** 2 + (y - hill + 0.08 * height) ** 2 / (0.1 * height) ** 2) < 1
    image[tree & ~house & ~roof] = (0.1, 0.4, 0.15)
    light = np.array([1.0 - 0.25 * phase, 1.0 - 0.45 * phase, 1.0 - 0.65 * phase], dtype=np.float32)
    return (np.clip(image * light, 0, 1) * 255).round().astype(np.uint8)


def write_demo_clip(folder: Path, frame=demo_frame, count: int = DEMO_FRAMES) -> None:
    """Write a clip of ``count`` frames (``frame(t)`` -> (H, W, 3) uint8) into ``folder`` atomically (a
    half-written clip never appears)."""
    with atomic_folder(folder, complete="init.png") as staging:
        (staging / "edges").mkdir()
        Image.fromarray(frame(0)).save(staging / "init.png")
        for t in range(1, count):
            edges = sobel_edges(to_tensor(frame(t)))
            Image.fromarray(edges_to_uint8(edges[0, 0])).save(staging / "edges" / f"{t:05d}.png")
    write_source_frames(folder / "source", frame, count)


def write_source_frames(folder: Path, frame=demo_frame, count: int = DEMO_FRAMES) -> None:
    """The scene's frames 0..T-1 (the source the edge maps were made from, for optical flow)."""
    if (folder / f"{count - 1:05d}.png").is_file():
        return
    with atomic_folder(folder, complete=f"{count - 1:05d}.png") as staging:
        for t in range(count):
            Image.fromarray(frame(t)).save(staging / f"{t:05d}.png")


def demo_clip(init_frame: str, edge_frames_dir: str, resize: str = "area",
              source_frames_dir: str | None = None, length: int | None = None) -> FrameFolders:
    """The ``io=demo`` source (``length=None``) or the ``io=demo_long`` one (``length`` frames): the demo
    clip, made in the cache folder on first use."""
    if length is None:
        return cached_clip(init_frame, edge_frames_dir, resize, source_frames_dir, cache_dir() / DEMO_FOLDER,
                           demo_frame, DEMO_FRAMES, "io=demo")

    def frame(t: int) -> np.ndarray:
        return long_demo_frame(t, length)

    return cached_clip(init_frame, edge_frames_dir, resize, source_frames_dir,
                       cache_dir() / LONG_DEMO_FOLDER.format(length=length), frame, length, "io=demo_long")


def shapes_clip(init_frame: str, edge_frames_dir: str, resize: str, source_frames_dir: str | None, seed: int,
                length: int) -> FrameFolders:
    """The ``io=shapes`` source: the synthetic shapes clip of ``seed`` (``qvedit.io.shapes``), ``length`` frames of
    64x64, made in the cache folder on first use."""
    scene = ToyScene.from_seed(seed, DEMO_SIZE)
    return cached_clip(init_frame, edge_frames_dir, resize, source_frames_dir,
                       cache_dir() / SHAPES_FOLDER.format(seed=seed, length=length), scene.frame, length, "io=shapes")


def cached_clip(init_frame: str, edge_frames_dir: str, resize: str, source_frames_dir: str | None, home: Path,
                frame, count: int, option: str) -> FrameFolders:
    """A synthetic clip of ``count`` frames (``frame(t)`` -> (H, W, 3) uint8) served like a frame folder.

    The clip is only ever written to ``home`` (in the cache folder, where conf/io/<option>.yaml points); an
    ``io.init_frame`` elsewhere must already exist, so a typo never fills a new folder with a clip.
    """
    init = Path(init_frame).expanduser()
    if not init.is_file():
        if init.parent.resolve() != home.resolve():
            raise QveditError(f"io.init_frame={init} does not exist, and {option} makes its clip only in {home}: "
                              "leave io.init_frame unset for the demo, or use io=frames for your own frames")
        write_demo_clip(home, frame, count)
    source = Path(source_frames_dir).expanduser() if source_frames_dir else None
    if source is not None and source.resolve() == (home / "source").resolve():
        write_source_frames(source, frame, count)  # a cache made before the demo had source frames
    return FrameFolders(str(init), str(Path(edge_frames_dir).expanduser()), resize,
                        str(source) if source is not None else None)
