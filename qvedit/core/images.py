"""Images between files, PIL and tensors: one place for every conversion qvedit makes.

Every image is brought to 8-bit RGB on reading (alpha dropped, palette expanded, 16-bit scaled
down), so frame 0 of the output is the init frame exactly as qvedit sees it. Tensors are float32
in [0, 1], ``(1, 3, H, W)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qvedit.core.errors import QveditError


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16/32-bit grey is scaled to 0..255, alpha is dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


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


def check_readable(path: Path) -> None:
    """Read only the header of an image file: a non-image fails now, not hours into a run."""
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError) as err:
        raise QveditError(f"cannot read image {path}: {err}. Replace or remove this file") from None


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """8-bit RGB (a PIL image or an (H, W, 3) uint8 array) -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def to_rgb8_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded as diffusers rounds."""
    if image.ndim == 4:
        image = image[0]
    return (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> 8-bit RGB PIL image."""
    return Image.fromarray(to_rgb8_array(image))


def unusable_image(path: Path, size: tuple[int, int]) -> str | None:
    """Why the image file ``path`` is not a whole ``size`` = (W, H) image (it does not decode, or has
    another size), or None when it is."""
    try:
        with Image.open(path) as image:
            image.verify()  # the chunks' checksums: damage that still decodes
        with Image.open(path) as image:
            image.load()
            if image.size != size:
                return f"it is {image.size[0]}x{image.size[1]}, not {size[0]}x{size[1]}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"it does not decode ({err})"
    return None
