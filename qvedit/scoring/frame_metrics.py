"""Per-frame quality metrics (docs/METHOD.md, section 4) and ``metrics.csv``.

Metrics are computed from the frames as written, after generation: they never feed back into it.
Columns: ``frame, hops, edge_loss, gram_loss, warp_error, color_drift, edge_offset_px, lpips_to_init,
lpips_to_prev, seconds, guided_steps, peak_mem_mib``; ``hops`` counts the edits between frame 0 and the frame (the
frame index in a chain, at most about ``schedule.keyframe_every`` with ``schedule=segments``); the quality columns
are left out with ``metrics=none``,
the LPIPS ones when the ``lpips`` package is missing; ``warp_error`` is empty when no flow was computed;
``color_drift`` (``qvedit.anchor.color``) and ``edge_offset_px`` (``qvedit.report.drift``) measure drift;
``clip_consistency`` is there only with open_clip and its weights (``qvedit.scoring.clip_consistency``).
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from PIL import Image

from qvedit.core.color_stats import LabStats, color_drift, lab_stats
from qvedit.core.errors import QveditError
from qvedit.core.files import append_whole, atomic_path
from qvedit.core.images import to_tensor
from qvedit.guidance import losses
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.optical_flow import FlowPair, warp_error
from qvedit.models import cache
from qvedit.scoring.clip_consistency import load_clip
from qvedit.scoring.drift import edge_offset_px
from qvedit.settings.report import MetricsSettings

log = logging.getLogger(__name__)

ORDER_COLUMNS = ["frame", "hops"]  # which frame, and how many edits from frame 0 it is
TIMING_COLUMNS = ["seconds", "guided_steps", "peak_mem_mib"]
QUALITY_COLUMNS = ["edge_loss", "gram_loss", "warp_error", "color_drift", "edge_offset_px"]
LPIPS_COLUMNS = ["lpips_to_init", "lpips_to_prev"]
LPIPS_SMALLEST_INPUT = 16  # lpips' VGG16 pools 4 times before relu5_3

def load_lpips(backbone: str, device: str):
    """``lpips.LPIPS(net="vgg")``, or None (with one warning) when the package is not installed; built once per
    process like the pipeline (``qvedit.models.cache``; VGG: ``losses.shared_vgg``)."""
    return cache.shared(("lpips", backbone, device), lambda: _build_lpips(backbone, device))


def _build_lpips(backbone: str, device: str):
    try:
        import lpips
    except ImportError:
        log.warning("lpips is not installed: lpips_to_init / lpips_to_prev are skipped (pip install lpips)")
        return None
    if backbone == "imagenet" and not losses.vgg16_weights_path().is_file():
        # lpips asks torchvision for the same VGG16 checkpoint the Gram loss uses; fail before it tries.
        losses.VGGStyle("imagenet", key="metrics.vgg_weights")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips uses torchvision's deprecated pretrained=
        torch.manual_seed(0)
        model = lpips.LPIPS(net="vgg", pnet_rand=backbone == "random", verbose=False)
    return model.to(device).eval().requires_grad_(False)


def load_vgg(backbone: str, device: str) -> losses.VGGStyle:
    return losses.shared_vgg(backbone, device, key="metrics.vgg_weights")


class FrameMetrics:
    """Scores each written frame: ``score(frame, edge, previous)`` -> the quality columns of its row.

    All images 8-bit RGB PIL at the init size. ``columns`` lists what ``metrics.csv`` holds.
    """

    def __init__(self, settings: MetricsSettings | None = None, device: str = "cpu", quality: bool | None = None):
        settings = settings or MetricsSettings(quality=False)
        self.settings = settings
        self.quality = settings.quality if quality is None else quality
        self.device = device
        self.vgg = self.lpips = None
        self.init = self.init_grams = None
        if self.quality:
            try:
                self.vgg = load_vgg(settings.vgg_weights, device)
                self.lpips = load_lpips(settings.vgg_weights, device)
            except QveditError as err:  # the weights gram_loss and LPIPS need
                raise QveditError(f"metrics: {err}; or run without quality metrics: metrics=none") from None
        self.clip = load_clip(device) if self.quality else None
        quality_columns = (QUALITY_COLUMNS + (LPIPS_COLUMNS if self.lpips is not None else [])
                           + (["clip_consistency"] if self.clip is not None else [])) if self.quality else []
        self.columns = ORDER_COLUMNS + quality_columns + TIMING_COLUMNS

    def start(self, init: Image.Image) -> None:
        """Remember frame 0 (the Gram and LPIPS reference)."""
        if self.quality:
            if min(init.size) < LPIPS_SMALLEST_INPUT:
                log.warning("metrics: the frames are %dx%d, smaller than VGG16 takes: gram_loss and LPIPS are computed "
                            "on them stretched to at least %d pixels a side (%d for gram_loss), so they say little",
                            *init.size, LPIPS_SMALLEST_INPUT, losses.VGG_SMALLEST_INPUT)
            self.init = to_tensor(init).to(self.device)
            with torch.no_grad():
                self.init_grams = self.vgg.grams(self.init, self.settings.gram_size)

    @torch.no_grad()
    def score(self, frame: Image.Image, edge: Image.Image, previous: Optional[Image.Image],
              flow: Optional[FlowPair] = None, color_target: Optional[LabStats] = None) -> dict:
        """The quality columns of a frame's row; ``warp_error`` only with the frame's source ``flow``,
        ``color_drift`` only with its target colour statistics (``qvedit.anchor.color.ColorAnchor``). Without
        ``previous`` (a keyframe, made before the frame before it) the columns against it are left empty;
        ``to_previous`` fills them in later."""
        if not self.quality:
            return {}
        image = to_tensor(frame).to(self.device)
        row = {
            "edge_loss": float(losses.edge_loss(image, image_to_edge_target(edge).to(self.device), "sobel", None)),
            "gram_loss": float(losses.gram_loss(self.vgg.grams(image, self.settings.gram_size), self.init_grams)),
        }
        if color_target is not None:
            row["color_drift"] = color_drift(lab_stats(frame), color_target)
        offset = edge_offset_px(frame, edge)
        if offset is not None:
            row["edge_offset_px"] = offset
        if self.lpips is not None:
            row["lpips_to_init"] = self._lpips(image, self.init)
        if previous is not None:
            row.update(self.to_previous(frame, previous, flow))
        return {k: significant(v) for k, v in row.items()}

    @torch.no_grad()
    def to_previous(self, frame: Image.Image, previous: Image.Image, flow: Optional[FlowPair] = None) -> dict:
        """The columns that compare a frame with the frame before it: ``warp_error`` (with the source ``flow``),
        ``clip_consistency`` and ``lpips_to_prev`` (those that are on)."""
        if not self.quality:
            return {}
        row = {}
        if flow is not None:
            row["warp_error"] = warp_error(to_tensor(frame).to(self.device), to_tensor(previous), flow)
        if self.clip is not None:
            row["clip_consistency"] = self.clip.consistency(frame, previous)
        if self.lpips is not None:
            row["lpips_to_prev"] = self._lpips(to_tensor(frame).to(self.device), to_tensor(previous).to(self.device))
        return {k: significant(v) for k, v in row.items()}

    def _lpips(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Both (1, 3, H, W) in [0, 1], resized to long side ``size``, compared in [-1, 1]."""
        a = losses.at_least(losses.resize_long_side(a, self.settings.size), LPIPS_SMALLEST_INPUT)
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        return float(self.lpips(a * 2 - 1, b * 2 - 1).mean())


def significant(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` significant digits, as ``metrics.csv`` keeps it: a gram_loss of 1.23457e-06 stays
    that, where 6 decimals made it 1e-06 (and a plot of it false steps)."""
    return float(f"{value:.{digits}g}")


class MetricsLog:
    """``metrics.csv``: one row per generated frame, appended and flushed as each frame finishes.

    ``keep_frames_before=k`` (a resumed run) keeps the complete rows of frames < k from an existing
    file with the same columns, so no row is ever duplicated or left half-written.
    """

    def __init__(self, path: Path, columns: list[str], keep_frames_before: int = 0,
                 hops: Optional[Callable[[int], int]] = None):
        self.path = path
        self.columns = columns
        kept = complete_rows(path, columns, hops)[: max(0, keep_frames_before - 1)]
        with atomic_path(path) as partial, open(partial, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([columns] + kept)

    def append(self, row: dict) -> None:
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([row.get(c, "") for c in self.columns])
        append_whole(self.path, line.getvalue())


def complete_rows(path: Path, columns: list[str], hops: Optional[Callable[[int], int]] = None) -> list[list[str]]:
    """The whole rows of frames 1, 2, ... without a gap in an existing ``metrics.csv`` with these columns.

    A file an earlier qvedit wrote without the ``hops`` column counts as well when ``hops`` (frame -> its hops)
    is given: its rows get the column, so a run folder started before it resumes with its frames."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:  # damaged on disk: its frames are made again
        log.warning("%s cannot be read (%s): its frames are made again", path, err)
        return []
    legacy = bool(rows) and hops is not None and "hops" in columns and rows[0] == [c for c in columns if c != "hops"]
    if not rows or (rows[0] != columns and not legacy):
        return []
    at = columns.index("hops") if legacy else 0
    kept = []
    for row in rows[1:]:
        if legacy and len(row) == len(columns) - 1 and row[0] == str(len(kept) + 1):
            row = [*row[:at], str(hops(len(kept) + 1)), *row[at:]]
        if len(row) != len(columns) or row[0] != str(len(kept) + 1):
            break
        kept.append(row)
    return kept
