"""Frame folders: reading the init frame and edge frames (``io=frames``), writing output frames."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

from qvedit.errors import QveditError
from qvedit import locks
from qvedit.files import atomic_path, commit_partial, remove_partials
from qvedit.images import check_readable, read_rgb8
from qvedit.io.settings import RESIZE_MODES, check_resize

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

    Frames are read one at a time (``edge_frame(k)``) so memory does not grow with T.
    """

    fps = 8.0  # frames carry no rate: previews play at 8 frames per second

    def __init__(self, init_frame: str | None, edge_frames_dir: str | None, resize: str = "area",
                 source_frames_dir: str | None = None):
        missing = [key for key, value in (("io.init_frame", init_frame), ("io.edge_frames_dir", edge_frames_dir))
                   if not value]
        if missing:
            raise QveditError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: pass "
                "io.init_frame=INIT.png io.edge_frames_dir=EDGES/ (or try: python -m qvedit experiment=demo)"
            )
        check_resize(resize)
        self.init_path = Path(init_frame)
        self.edge_dir = Path(edge_frames_dir)
        self.resize = resize
        if not self.init_path.is_file():
            raise QveditError(f"init frame not found: {self.init_path} (set io.init_frame=PATH)")
        self.edge_paths = list_edge_frames(self.edge_dir)
        for path in self.edge_paths:  # headers only: catch a non-image before hours of generation
            check_readable(path)
        self.source_paths = self._source_frames(Path(source_frames_dir)) if source_frames_dir else []

    def _source_frames(self, folder: Path) -> list[Path]:
        """The original frames 0..T-1 the edge maps came from: as many as the edge maps + 1, frame 0's size."""
        paths = list_images(folder, "io.source_frames_dir", "source frame")
        wanted = len(self.edge_paths) + 1
        if len(paths) < wanted:
            raise QveditError(f"io.source_frames_dir {folder} holds {len(paths)} frames but the clip has {wanted} "
                              f"(frame 0 and one per edge map): give all the original frames, or leave it unset")
        size = read_rgb8(self.init_path).size
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
        return resized(read_rgb8(self.edge_paths[k]), size, self.resize)

    def __len__(self) -> int:
        return len(self.edge_paths)

    def finish(self, frame_paths: list[Path], layout) -> list[Path]:
        """Frame folders need nothing after the last frame."""
        return []


class FrameWriter:
    """Writes ``00000.png, 00001.png ...`` into a folder; each file appears whole or not at all.

    The writer holds the folder's lock (``qvedit.locks``) from the start: a second run into the
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
