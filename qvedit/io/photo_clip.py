"""A clip made from a real photograph: a camera panning across it while it slowly zooms in.

The synthetic demo clips are flat shapes; a photograph has the textures, fine edges and noise of real frames, and
its motion is known exactly. The photographs are scikit-image's bundled samples (no download): ``astronaut``,
``chelsea``, ``coffee``, ``rocket``. ``write_photo_clip`` writes the frames as a folder of source frames, which
``io.source_frames_dir`` takes alone (frame 0 is its first frame, the edge maps are made from the others):

    python -m qvedit experiment=tiny_cpu io.source_frames_dir=$(python -m qvedit.io.photo_clip DIR)
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_folder

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> Image.Image:
    """One of scikit-image's sample photographs as 8-bit RGB."""
    if name not in PHOTOS:
        raise QveditError(f"no sample photograph {name!r}: use {', '.join(PHOTOS)}")
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def photo_frames(name: str, length: int, size: tuple[int, int] = (64, 64), pan: tuple[float, float] = (0.75, 0.25),
                 zoom: float = 0.005) -> list[Image.Image]:
    """``length`` frames (W, H) = ``size`` of the photograph ``name``: the view starts on a window of 60% of the
    photo's short side (its aspect the frames'), left of centre, moves by ``pan`` output pixels a frame (right, down)
    and narrows by ``zoom`` a frame (zooming in); bicubic resampling of the window's exact extent."""
    image = photo(name)
    width, height = image.size
    aspect = size[0] / size[1]
    window_h = 0.6 * min(height, width / aspect)
    window_w = window_h * aspect
    centre_x, centre_y = 0.35 * width, 0.45 * height
    frames = []
    for t in range(length):
        scale = (1 - zoom) ** t
        pixel = window_w * scale / size[0]  # photo pixels per output pixel
        x, y = centre_x + pan[0] * t * pixel, centre_y + pan[1] * t * pixel
        w, h = window_w * scale, window_h * scale
        x, y = min(max(x, w / 2), width - w / 2), min(max(y, h / 2), height - h / 2)
        box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        frames.append(image.transform(size, Image.Transform.EXTENT, box, Image.Resampling.BICUBIC))
    return frames


def write_photo_clip(folder: str | Path, name: str = "astronaut", length: int = 16,
                     size: tuple[int, int] = (64, 64)) -> Path:
    """The frames of ``photo_frames(name, length, size)`` as ``folder/00000.png ...`` (written once, whole or not at
    all); returns ``folder``, for ``io.source_frames_dir``."""
    folder = Path(folder)
    if (folder / f"{length - 1:05d}.png").is_file():
        return folder
    with atomic_folder(folder, complete=f"{length - 1:05d}.png") as staging:
        for t, frame in enumerate(photo_frames(name, length, size)):
            frame.save(staging / f"{t:05d}.png")
    return folder


if __name__ == "__main__":  # python -m qvedit.io.photo_clip FOLDER [PHOTO] [LENGTH]: prints the folder
    args = sys.argv[1:]
    if not args:
        raise SystemExit(f"usage: python -m qvedit.io.photo_clip FOLDER [{'|'.join(PHOTOS)}] [LENGTH]")
    print(write_photo_clip(args[0], *(args[1:2] or ["astronaut"]), *[int(a) for a in args[2:3]]))
