"""Colour statistics in CIELAB: how far a frame's colours are from a target's.

A frame's colour statistics are the per-channel mean and standard deviation of its CIELAB values (L in
0..100, a and b about -100..100; D65 white, scikit-image's ``rgb2lab``). ``color_drift`` is the Euclidean
distance between a frame's six numbers and its target's, in Lab units (a uniform cast of 5 in L gives 5).
The targets are frame 0's (``qvedit.anchor.color.ColorAnchor``); ``anchor.color`` moves frames toward them,
``ttlg.color_scale`` guides toward them, and the metrics measure ``color_drift`` from them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage import color as skcolor

STATS_SIDE = 256  # statistics are taken on the frame shrunk to this long side (area): the same numbers, faster
MIN_STD = 1e-3  # a flat channel keeps its deviation ratio finite


@dataclass(frozen=True)
class LabStats:
    """Per-channel CIELAB mean and standard deviation, each shaped (3,) for (L, a, b)."""

    mean: np.ndarray
    std: np.ndarray

    def moved_by(self, before: "LabStats", after: "LabStats") -> "LabStats":
        """These statistics changed as a source changed from ``before`` to ``after``."""
        return LabStats(self.mean + (after.mean - before.mean),
                        self.std * after.std / np.maximum(before.std, MIN_STD))


def to_lab(image: Image.Image) -> np.ndarray:
    """8-bit RGB -> (H, W, 3) float64 CIELAB."""
    return skcolor.rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)


def from_lab(lab: np.ndarray) -> Image.Image:
    """(H, W, 3) CIELAB -> 8-bit RGB (colours outside sRGB clipped)."""
    with warnings.catch_warnings():  # colours outside sRGB are expected here, and clipped
        warnings.simplefilter("ignore", UserWarning)
        rgb = np.clip(skcolor.lab2rgb(lab), 0.0, 1.0)
    return Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8))


def shrunk(image: Image.Image) -> Image.Image:
    scale = STATS_SIDE / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BOX)


def lab_stats(image: Image.Image) -> LabStats:
    """The colour statistics of an 8-bit RGB image."""
    return stats_of(to_lab(shrunk(image)))


def color_drift(stats: LabStats, target: LabStats) -> float:
    """Distance (Lab units) between a frame's six colour numbers and its target's."""
    return float(np.sqrt(np.sum((stats.mean - target.mean) ** 2) + np.sum((stats.std - target.std) ** 2)))


def stats_of(lab: np.ndarray) -> LabStats:
    """The colour statistics of an image already in CIELAB, (H, W, 3)."""
    pixels = lab.reshape(-1, 3)
    return LabStats(pixels.mean(axis=0), pixels.std(axis=0))
