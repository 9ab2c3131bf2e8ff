"""Frame folders: reading the init frame and edge frames, writing output frames.

Every image is brought to 8-bit RGB on reading (alpha dropped, palette expanded, 16-bit scaled
down), so frame 0 of the output is the init frame exactly as qvedit sees it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qvedit.errors import QveditError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}


def natural_key(path: Path) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16/32-bit grey is scaled to 0..255, alpha is dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def read_rgb8(path: Path) -> Image.Image:
    """Decode an image file fully; a missing, truncated or non-image file is a QveditError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb8(image)
    except FileNotFoundError:
        raise QveditError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise QveditError(f"cannot read image {path}: {err}. Replace or remove this file") from None


def list_edge_frames(folder: Path) -> list[Path]:
    """Image files of ``folder`` in natural order; hidden files and other files are skipped."""
    if not folder.exists():
        raise QveditError(f"edge frame folder not found: {folder} (set io.edge_frames_dir=DIR)")
    if not folder.is_dir():
        raise QveditError(f"io.edge_frames_dir is not a folder: {folder}")
    paths = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not paths:
        raise QveditError(
            f"no edge frames in {folder}: it holds no {'/'.join(sorted(IMAGE_SUFFIXES))} files "
            "(hidden files are skipped)"
        )
    return sorted(paths, key=natural_key)


class FrameFolders:
    """Frame-folder mode (spec §2.1-1): an init frame and a folder of T-1 edge frames.

    Frames are read one at a time (``edge_frame(k)``) so memory does not grow with T.
    """

    def __init__(self, init_frame: str | None, edge_frames_dir: str | None, out_frames_dir: str | None = None,
                 resize: str = "area"):
        missing = [key for key, value in (("io.init_frame", init_frame), ("io.edge_frames_dir", edge_frames_dir))
                   if not value]
        if missing:
            raise QveditError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: pass "
                "io.init_frame=INIT.png io.edge_frames_dir=EDGES/ (or try: python -m qvedit experiment=demo)"
            )
        if resize not in RESAMPLING:
            raise QveditError(f"io.resize={resize!r} is not supported: use one of {', '.join(RESAMPLING)}")
        self.init_path = Path(init_frame)
        self.edge_dir = Path(edge_frames_dir)
        self.out_frames_dir = out_frames_dir
        self.resize = resize
        if not self.init_path.is_file():
            raise QveditError(f"init frame not found: {self.init_path} (set io.init_frame=PATH)")
        self.edge_paths = list_edge_frames(self.edge_dir)
        for path in self.edge_paths:  # headers only: catch a non-image before hours of generation
            try:
                with Image.open(path):
                    pass
            except (UnidentifiedImageError, OSError) as err:
                raise QveditError(f"cannot read image {path}: {err}. Replace or remove this file") from None

    def init_image(self) -> Image.Image:
        """Frame 0 as 8-bit RGB."""
        return read_rgb8(self.init_path)

    def edge_frame(self, k: int, size: tuple[int, int]) -> Image.Image:
        """Edge frame k (the edge of output frame k+1) as 8-bit RGB resized to ``size`` = (W, H)."""
        edge = read_rgb8(self.edge_paths[k])
        if edge.size != size:
            edge = edge.resize(size, RESAMPLING[self.resize])
        return edge

    def __len__(self) -> int:
        return len(self.edge_paths)

    def finish(self, frame_paths: list[Path], run_dir: Path) -> list[Path]:
        """Frame folders need nothing after the last frame; returns no extra outputs."""
        return []


class FrameWriter:
    """Writes ``00000.png, 00001.png ...`` into a folder; each file appears whole or not at all."""

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
        for stale in self.folder.glob(".*.partial"):  # left by a killed run
            stale.unlink()

    def path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.png"

    def write(self, index: int, image: Image.Image) -> Path:
        final = self.path(index)
        partial = final.with_name(f".{final.name}.partial")
        try:
            image.save(partial, format="PNG")
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final

    def finished(self) -> int:
        """How many frames 00000, 00001, ... are already there without a gap."""
        count = 0
        while self.path(count).is_file():
            count += 1
        return count
