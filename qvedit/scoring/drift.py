"""Drift over a clip, measured: the per-frame ``edge_offset_px`` and the clip-level trend of the drift columns.

A clip is a chain of edits, so what goes wrong tends to grow with the frame index. For each drift column
the clip summary gives the least-squares slope over the frame index (units per frame) and the ratio of the
mean over the last quarter of the frames to the mean over the first quarter (1.0: no growth). The tables and
plots that show them are ``qvedit.report.drift``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from qvedit.core.images import to_tensor
from qvedit.guidance.edges import image_to_edge_target, sobel_edges

DRIFT_COLUMNS = ("color_drift", "edge_offset_px", "lpips_to_init", "gram_loss")


OFFSET_SIDE = 512  # frames are aligned at this long side at most (the offset is scaled back to the frame's pixels)


OFFSET_MIN_SIDE = 8  # phase correlation needs a window of a few pixels: smaller frames get no offset


def edge_offset_px(frame: Image.Image, edge: Image.Image) -> Optional[float]:
    """The length (pixels) of the translation that best aligns ``frame``'s soft Sobel edges with its edge map
    ``edge``, by phase correlation (OpenCV ``phaseCorrelate``, Hann window). A shift or a zoom that builds up
    along the chain shows as a growing offset; a frame that follows its edge map gives about 0. None for frames
    with a side under ``OFFSET_MIN_SIDE`` pixels."""
    import cv2

    if min(frame.size) < OFFSET_MIN_SIDE:
        return None
    scale = min(1.0, OFFSET_SIDE / max(frame.size))
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    frame, edge = frame.resize(size, Image.Resampling.BOX), edge.resize(size, Image.Resampling.BOX)
    edges = sobel_edges(to_tensor(frame))[0, 0].numpy().astype(np.float64)
    target = image_to_edge_target(edge)[0, 0].numpy().astype(np.float64)
    window = cv2.createHanningWindow(edges.shape[::-1], cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(target, edges, window)
    return float(math.hypot(dx, dy)) / scale


def shown(value: Optional[float], spec: str = ".4g") -> str:
    """``value`` formatted with ``spec``, or ``n/a`` where there is no number (None, NaN: a growth over a first
    quarter of 0, a mean of no rows): a summary or a table never says ``nan``."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def quarter(frames: int) -> int:
    """How many frames a quarter of ``frames`` is (at least 1)."""
    return max(1, frames // 4)


def last_quarter_mean(series: pd.Series) -> float:
    """The mean of the last quarter of ``series`` (its finite values, in frame order)."""
    return float(series.iloc[-quarter(len(series)):].mean())


@dataclass(frozen=True)
class Trend:
    """How a drift column grows over a clip."""

    slope: float  # least-squares units per frame
    growth: float  # last quarter's mean / first quarter's mean; nan when the first is 0
    last_quarter: float  # mean over the last quarter of the frames


def trend(values: Sequence[float], frames: Optional[Sequence[int]] = None) -> Optional[Trend]:
    """The trend of one column over frames 1..N; None with fewer than 2 finite values."""
    series = pd.Series(list(values), index=list(frames) if frames is not None else None, dtype=float).dropna()
    if len(series) < 2:
        return None
    first, last = series.iloc[:quarter(len(series))].mean(), last_quarter_mean(series)
    slope = float(np.polyfit(series.index.to_numpy(dtype=float), series.to_numpy(), 1)[0])
    return Trend(slope, float(last / first) if first > 0 else math.nan, float(last))


def clip_trends(metrics: pd.DataFrame, frames: Optional[int] = None) -> dict[str, Trend]:
    """{column: trend} of every drift column in a ``metrics.csv`` table, over its frames 1..``frames``."""
    table = metrics.set_index("frame")
    if frames is not None:
        table = table.loc[1:frames]
    found = {}
    for column in DRIFT_COLUMNS:
        if column in table.columns:
            result = trend(table[column].to_numpy(), table.index.to_numpy())
            if result is not None:
                found[column] = result
    return found


def describe(trends: dict[str, Trend]) -> str:
    """``color_drift 3.1 (x1.8, +0.12/frame)``: per column, the last quarter's mean, its growth over the first
    quarter's and the slope."""
    return ", ".join(f"{column} {shown(t.last_quarter)} (x{shown(t.growth, '.3g')}, {shown(t.slope, '+.3g')}/frame)"
                     for column, t in trends.items())


def median_trends(metrics: dict, frames: int) -> dict[str, Trend]:
    """{column: trend} with each number the median over seeds; ``metrics``: {seed: metrics.csv table}."""
    per_seed = [clip_trends(table, frames) for table in metrics.values()]
    found = {}
    for column in DRIFT_COLUMNS:
        trends = [t[column] for t in per_seed if column in t]
        if trends and len(trends) == len(per_seed):
            found[column] = Trend(*(float(np.nanmedian([getattr(t, name) for t in trends]))
                                    for name in ("slope", "growth", "last_quarter")))
    return found


def last_quarter_ratio(on: dict, off: dict, frames: int) -> Optional[tuple[float, float, float]]:
    """(guided / off, guided, off) of the median over seeds of the mean ``color_drift`` over the last quarter of
    frames 1..``frames``; None when a job has no ``color_drift`` column. ``on`` / ``off``: {seed: table}."""
    def median_last(tables: dict) -> Optional[float]:
        means = []
        for table in tables.values():
            if "color_drift" not in table.columns:
                return None
            values = table.set_index("frame")["color_drift"].loc[1:frames].dropna()
            if values.empty:
                return None
            means.append(last_quarter_mean(values))
        return float(np.median(means))

    guided, unguided = median_last(on), median_last(off)
    if guided is None or unguided is None:
        return None
    ratio = guided / unguided if unguided > 0 else (1.0 if guided == 0 else math.inf)
    return ratio, guided, unguided


def judge_drift(on: dict, off: dict, frames: int, limit: float) -> tuple[Optional[float], Optional[bool], str]:
    """The drift criterion: (guided / off last-quarter ``color_drift``, passed, detail); (None, None, why) when
    it cannot be judged. ``on`` / ``off``: {seed: metrics.csv table}."""
    drift = last_quarter_ratio(on, off, frames)
    if drift is None:
        return None, None, "no color_drift column (metrics=none?)"
    ratio, guided, unguided = drift
    return ratio, bool(ratio <= limit), (f"median over seeds of mean color_drift over frames "
                                         f"{frames - quarter(frames) + 1}..{frames}: {shown(guided)} vs {shown(unguided)}")
