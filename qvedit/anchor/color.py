"""Holding a clip's colours to frame 0's: each frame's target colour statistics, and moving a frame toward them.

The statistics are CIELAB means and deviations (``qvedit.core.color_stats``). The target of frame i is frame 0's
statistics; where the source frames are known, moved by the source's own change from its frame 0 to its
frame i (the mean shifted by the source's shift, the deviation scaled by the source's ratio), so that a scene
that really darkens or warms is not counted as drift and is not undone.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image
from skimage import exposure

from qvedit.core.color_stats import MIN_STD, LabStats, from_lab, lab_stats, shrunk, stats_of, to_lab
from qvedit.io.source import FrameSource
from qvedit.settings.anchor import AnchorSettings

MATCH_PASSES = 3  # colours pushed out of sRGB are clipped, which moves the statistics: match again (5.4 -> 0.5 Lab)


def match_mean_std(image: Image.Image, target: LabStats, strength: float = 1.0) -> Image.Image:
    """``image`` with each CIELAB channel moved to ``target``'s mean and deviation; ``strength`` in [0, 1]
    moves the statistics that share of the way (0: unchanged, 1: matched).

    The change is one affine map per Lab channel. Clipping the result to sRGB moves its statistics again, so
    the map is refined ``MATCH_PASSES`` times on the shrunk frame (where the statistics are measured) and
    applied to the whole frame once."""
    small = to_lab(shrunk(image))
    own = stats_of(small)
    goal = LabStats(own.mean + strength * (target.mean - own.mean), own.std + strength * (target.std - own.std))
    scale, shift = np.ones(3), np.zeros(3)
    for _ in range(MATCH_PASSES):
        now = stats_of(to_lab(from_lab(small * scale + shift)))
        ratio = goal.std / np.maximum(now.std, MIN_STD)
        scale, shift = scale * ratio, (shift - now.mean) * ratio + goal.mean
    return from_lab(to_lab(image) * scale + shift)


def match_histogram(image: Image.Image, reference: Image.Image, strength: float = 1.0) -> Image.Image:
    """``image`` with each RGB channel's histogram matched to ``reference``'s (scikit-image
    ``exposure.match_histograms``), blended with the image by ``strength`` in [0, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    matched = exposure.match_histograms(pixels, np.asarray(reference.convert("RGB"), dtype=np.float64),
                                        channel_axis=-1)
    return Image.fromarray(np.clip(np.rint(pixels + strength * (matched - pixels)), 0, 255).astype(np.uint8))


class ColorAnchor:
    """Frame 0's colours as the target of every later frame, moved by the source's own change.

    ``target(i)`` gives frame i's target statistics; ``correct(frame, i)`` applies ``anchor.color``. Source
    frames are read through ``source.source_frame`` (rising order) when ``source.has_source_frames``.
    """

    def __init__(self, settings: AnchorSettings, first: Image.Image, source: Optional[FrameSource] = None):
        """first: frame 0 (8-bit RGB), whose size every frame has."""
        self.settings = settings
        self.first = first
        self.first_stats = lab_stats(first)
        self.source = source if source is not None and source.has_source_frames else None
        self.source_first = lab_stats(self.source.source_frame(0, first.size)) if self.source else None
        self._last: tuple[int, LabStats] = (0, self.first_stats)  # the frames ask one at a time, each twice

    @property
    def follows_source(self) -> bool:
        """Whether targets move with the source frames (else every target is frame 0's statistics)."""
        return self.source is not None

    def target(self, index: int) -> LabStats:
        """Frame ``index``'s target colour statistics."""
        if index == 0 or self.source is None:
            return self.first_stats
        if self._last[0] != index:
            now = lab_stats(self.source.source_frame(index, self.first.size))
            self._last = (index, self.first_stats.moved_by(self.source_first, now))
        return self._last[1]

    def correct(self, frame: Image.Image, index: int) -> Image.Image:
        """``frame`` (8-bit RGB at frame 0's size) with ``anchor.color`` applied toward its target."""
        mode, strength = self.settings.color, self.settings.color_strength
        if mode == "none" or strength == 0:
            return frame
        target = self.target(index)
        if mode == "mean_std":
            return match_mean_std(frame, target, strength)
        reference = self.first if self.source is None else match_mean_std(self.first, target)
        return match_histogram(frame, reference, strength)
