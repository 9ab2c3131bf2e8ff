"""Frame folders: reading the init frame and edge frames (``io=frames``), writing output frames."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from qvedit.core import locks
from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_path, commit_partial, remove_partials
from qvedit.core.images import check_readable, read_rgb8, to_tensor
from qvedit.guidance.edges import edge_map, edges_to_uint8
from qvedit.settings.io import RESIZE_MODES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}
assert set(RESAMPLING) == set(RESIZE_MODES)


def natural_key(path: Path) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path, key: str, what: str) -> list[Path]:
    """Image files of ``folder`` in natural order; hidden files and other files are skipped.
    ``key`` and ``what`` name the setting and the frames in errors."""
    if not folder.exists():
        raise QveditError(f"{what} folder not found: {folder} (set {key}=DIR)")
    if not folder.is_dir():
        raise QveditError(f"{key} is not a folder: {folder}")
    paths = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not paths:
        raise QveditError(
            f"no {what}s in {folder}: it holds no {'/'.join(sorted(IMAGE_SUFFIXES))} files "
            "(hidden files are skipped)"
        )
    return sorted(paths, key=natural_key)


def list_edge_frames(folder: Path) -> list[Path]:
    return list_images(folder, "io.edge_frames_dir", "edge frame")


def resized(image: Image.Image, size: tuple[int, int], resize: str) -> Image.Image:
    """``image`` at ``size`` = (W, H) with the ``io.resize`` filter (unchanged if it already fits)."""
    return image if image.size == size else image.resize(size, RESAMPLING[resize])


class FrameFolders:
    """Frame-folder mode (docs/METHOD.md, section 1): an init frame and a folder of T-1 edge frames (a ``FrameSource``).

    With ``source_frames_dir`` (the original frames 0..T-1) the init frame may be left out (frame 0 is
    the source's first frame) and so may the edge folder: edge frame k is then made from source frame
    k+1 with ``edge_op``, as for a video, and saved in ``edges_dir`` (``EdgeMaker``).
    Frames are read one at a time (``edge_frame(k)``) so memory does not grow with T.
    """

    fps = 8.0  # frames carry no rate: previews play at 8 frames per second

    def __init__(self, init_frame: str | None, edge_frames_dir: str | None, resize: str = "area",
                 source_frames_dir: str | None = None, edge_op: str = "sobel", edges_dir: Path | None = None):
        if not source_frames_dir:
            missing = [key for key, value in (("io.init_frame", init_frame), ("io.edge_frames_dir", edge_frames_dir))
                       if not value]
            if missing:
                raise QveditError(
                    f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: pass "
                    "io.init_frame=INIT.png io.edge_frames_dir=EDGES/, or io.source_frames_dir=FRAMES/ alone (frame 0 "
                    "is its first frame, the edge maps are made from the others); or try python -m qvedit experiment=demo"
                )
        self.resize = resize
        self.init_path = Path(init_frame) if init_frame else None
        if self.init_path is not None and not self.init_path.is_file():
            raise QveditError(f"init frame not found: {self.init_path} (set io.init_frame=PATH)")
        self.edge_dir = Path(edge_frames_dir) if edge_frames_dir else None
        self.edge_paths = list_edge_frames(self.edge_dir) if self.edge_dir else []
        for path in self.edge_paths:  # headers only: catch a non-image before hours of generation
            check_readable(path)
        self.edges = None if self.edge_dir else EdgeMaker(edge_op, edges_dir)
        self.source_paths = self._source_frames(Path(source_frames_dir)) if source_frames_dir else []
        self.init_path = self.init_path or self.source_paths[0]

    def _source_frames(self, folder: Path) -> list[Path]:
        """The original frames 0..T-1 the edge maps came from: as many as the edge maps + 1 (all of them
        when the edge maps are made from them), frame 0's size."""
        paths = list_images(folder, "io.source_frames_dir", "source frame")
        if self.edges is not None and len(paths) < 2:
            raise QveditError(f"io.source_frames_dir {folder} holds only 1 frame and io.edge_frames_dir is not set, "
                              "so there are no later frames to make edge maps from: give the whole clip, or pass "
                              "io.edge_frames_dir=EDGES/")
        wanted = len(paths) if self.edges is not None else len(self.edge_paths) + 1
        if len(paths) < wanted:
            raise QveditError(f"io.source_frames_dir {folder} holds {len(paths)} frames but the clip has {wanted} "
                              f"(frame 0 and one per edge map): give all the original frames, or leave it unset")
        size = read_rgb8(self.init_path or paths[0]).size
        for path in paths[:wanted]:
            check_readable(path)
            with Image.open(path) as image:
                if image.size != size:
                    raise QveditError(f"source frame {path} is {image.size[0]}x{image.size[1]} but frame 0 is "
                                      f"{size[0]}x{size[1]}: source frames must have frame 0's size")
        return paths[:wanted]

    @property
    def has_source_frames(self) -> bool:
        return bool(self.source_paths)

    def source_frame(self, i: int, size: tuple[int, int]) -> Image.Image:
        return resized(read_rgb8(self.source_paths[i]), size, "area")

    def init_image(self) -> Image.Image:
        return read_rgb8(self.init_path)

    def edge_frame(self, k: int, size: tuple[int, int]) -> Image.Image:
        if self.edges is not None:
            return resized(self.edges.edge(k + 1, read_rgb8(self.source_paths[k + 1])), size, self.resize)
        return resized(read_rgb8(self.edge_paths[k]), size, self.resize)

    def __len__(self) -> int:
        return len(self.source_paths) - 1 if self.edges is not None else len(self.edge_paths)

    def finish(self, frame_paths: list[Path], layout) -> list[Path]:
        """Frame folders need nothing after the last frame."""
        return []


class EdgeMaker:
    """Edge maps made from source frames with ``edge_op`` (the project's Sobel or Laplacian, 0..255 grey),
    each also saved as ``00001.png ...`` in ``folder`` (the edge of output frame i named i) when given.
    Used where a clip comes without edge maps: a video, or a folder of source frames."""

    def __init__(self, edge_op: str, folder: Path | None = None):
        self.op = edge_op
        self.writer = FrameWriter(folder) if folder else None

    def edge(self, index: int, frame: Image.Image | np.ndarray) -> Image.Image:
        """The edge map of output frame ``index``, made from its source ``frame`` (8-bit RGB), as RGB."""
        grey = Image.fromarray(edges_to_uint8(edge_map(to_tensor(frame), self.op)), mode="L")
        if self.writer is not None:
            self.writer.write(index, grey)
        return grey.convert("RGB")


class FrameWriter:
    """Writes ``00000.png, 00001.png ...`` into a folder; each file appears whole or not at all.

    The writer holds the folder's lock (``qvedit.core.locks``) from the start: a second run into the
    same folder is refused before it touches anything there.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise QveditError(f"output folder {self.folder} is a file: set io.out_frames_dir to a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise QveditError(f"cannot create output folder {self.folder}: {err.strerror}") from None
        if not os.access(self.folder, os.W_OK):
            raise QveditError(f"output folder {self.folder} is not writable: set io.out_frames_dir elsewhere")
        if not locks.delegated(self.folder):  # a Ray worker writes under its driver's lock
            locks.hold(self.folder)
            remove_partials(self.folder)  # left by a killed run

    def path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.png"

    def write(self, index: int, image: Image.Image) -> Path:
        with atomic_path(self.path(index)) as partial:
            image.save(partial, format="PNG")
        return self.path(index)

    def stage(self, index: int, image: Image.Image) -> Path:
        """Write frame ``index`` under its temporary name; ``commit(index)`` makes it appear."""
        with atomic_path(self.path(index), rename=False) as partial:
            image.save(partial, format="PNG")
        return self.path(index)

    def commit(self, index: int) -> Path:
        return commit_partial(self.path(index))

    def finished(self) -> int:
        """How many frames 00000, 00001, ... are already there without a gap."""
        count = 0
        while self.path(count).is_file():
            count += 1
        return count
