"""Drift over a clip: the per-frame ``edge_offset_px`` and the clip-level trend of the drift columns.

A clip is a chain of edits, so what goes wrong tends to grow with the frame index. For each drift column
the clip summary gives the least-squares slope over the frame index (units per frame) and the ratio of the
mean over the last quarter of the frames to the mean over the first quarter (1.0: no growth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from qvedit.guidance.edges import image_to_edge_target, sobel_edges
from qvedit.images import to_tensor

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


def comparison_trends(comparison, guided: bool) -> dict[str, Trend]:
    """A comparison's drift trends on one side (guided or its ttlg=off twins), median over seeds."""
    return median_trends(comparison.metrics(guided), comparison.frames)


def paired_trends(comparison) -> list[tuple[str, Trend, Trend]]:
    """(column, guided trend, off trend) for each drift column both sides of the comparison have."""
    guided, off = comparison_trends(comparison, True), comparison_trends(comparison, False)
    return [(column, guided[column], off[column]) for column in DRIFT_COLUMNS if column in guided and column in off]


def drift_table(comparison) -> list[str]:
    """Markdown rows: per drift column, guided and off: last-quarter mean, growth, slope."""
    rows = ["| metric | guided: last-quarter mean | growth (last / first quarter) | slope per frame | off: last-quarter "
            "mean | growth | slope per frame |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for column, *sides in paired_trends(comparison):
        cells = [f"{shown(t.last_quarter)} | {shown(t.growth, '.3g')} | {shown(t.slope, '+.3g')}" for t in sides]
        rows.append(f"| {column} | {cells[0]} | {cells[1]} |")
    return rows if len(rows) > 2 else ["(no drift columns: metrics=none?)"]


def drift_by_setting(comparisons: list) -> list[str]:
    """Markdown rows comparing the sweep's settings (anchor presets ...) on drift, guided and off each."""
    rows = ["| setting | ttlg | color_drift, last-quarter mean | growth (last / first quarter) | edge_offset_px, "
            "last-quarter mean | growth |", "| --- | --- | --- | --- | --- | --- |"]
    for comparison, guided in sides_by_setting(comparisons):  # the off jobs once, however many settings share them
        trends = comparison_trends(comparison, guided)
        cells = [f"{shown(trends[c].last_quarter)} | {shown(trends[c].growth, '.3g')}" if c in trends else "- | -"
                 for c in ("color_drift", "edge_offset_px")]
        rows.append(f"| {comparison.context or '-'} | {comparison.label if guided else 'off'} | {cells[0]} | "
                    f"{cells[1]} |")
    return rows


def sides_by_setting(comparisons: list) -> list[tuple[object, bool]]:
    """(comparison, guided) for each row of a "drift by setting" table: each comparison's guided jobs, and its
    ``ttlg=off`` jobs once (several guided settings compared with the same off jobs share them)."""
    rows, seen = [], set()
    for comparison in comparisons:
        off = tuple(sorted(str(job.path) for job in comparison.off.values()))
        if off not in seen:
            seen.add(off)
            rows.append((comparison, False))
        rows.append((comparison, True))
    return rows


def judge_drift(on: dict, off: dict, frames: int, limit: float) -> tuple[Optional[float], Optional[bool], str]:
    """The drift criterion: (guided / off last-quarter ``color_drift``, passed, detail); (None, None, why) when
    it cannot be judged. ``on`` / ``off``: {seed: metrics.csv table}."""
    drift = last_quarter_ratio(on, off, frames)
    if drift is None:
        return None, None, "no color_drift column (metrics=none?)"
    ratio, guided, unguided = drift
    return ratio, bool(ratio <= limit), (f"median over seeds of mean color_drift over frames "
                                         f"{frames - quarter(frames) + 1}..{frames}: {shown(guided)} vs {shown(unguided)}")


def plot_drift(clips: dict[str, dict], frames: Optional[int], title: str, out,
               keyframes: Sequence[int] = ()) -> Optional[object]:
    """``drift_figure`` written as a PNG at ``out``; returns it, None when no drift column is there."""
    from qvedit.files import write_figure_png

    figure = drift_figure(clips, frames, title, keyframes)
    return None if figure is None else write_figure_png(figure, out, lay_out=False)


def drift_figure(clips: dict[str, dict], frames: Optional[int], title: str, keyframes: Sequence[int] = ()):
    """One figure, a panel per drift column over frames 1..``frames`` (None: all): a line per seed and clip, a
    colour per seed and a line style per clip, a shared legend below the panels (as many columns as fit the
    figure's width), each panel's y axis from 0 (``honest_y``). ``clips``: {name: {seed: metrics.csv table}}, e.g.
    {"guided": ..., "off": ...}. ``keyframes`` (``schedule=segments``): a dotted line at each seam, between a
    segment's last frame and the keyframe after it. None when no column is there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tables = [table for seeds in clips.values() for table in seeds.values()]
    columns = [c for c in DRIFT_COLUMNS if tables and all(c in t.columns and not t[c].isna().all() for t in tables)]
    if not columns:
        return None
    figure, axes = plt.subplots(1, len(columns), figsize=(max(7.2, 3.6 * len(columns)), 3.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = sorted({seed for runs in clips.values() for seed in runs}, key=str)
    for axis, column in zip(axes[0], columns):
        lines = []
        for (name, runs), style in zip(clips.items(), ("-", "--", ":", "-.")):
            for number, seed in enumerate(seeds):
                if seed in runs:
                    series = runs[seed].set_index("frame")[column].loc[1:frames]
                    axis.plot(series.index, series.to_numpy(), style, color=colours[number % len(colours)],
                              marker="o", markersize=3, label=f"{name}, seed {seed}")
                    lines.append((series.index.to_numpy(dtype=float), series.to_numpy(dtype=float)))
        for number, keyframe in enumerate(keyframes):
            axis.axvline(keyframe - 0.5, color="#b05000", linestyle=":", linewidth=1,
                         label="seam (before a keyframe)" if number == 0 else None)
        honest_y(axis, lines)
        axis.set_title(column)
        axis.set_xlabel("frame")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.suptitle(title)
    legend = legend_that_fits(figure, handles, labels)
    below = legend.get_window_extent(figure.canvas.get_renderer()).height / figure.dpi + 0.1  # inches
    figure.set_figheight(3.2 + below)  # the panels keep their height whatever the legend takes
    figure.tight_layout(rect=(0, below / (3.2 + below), 1, 1 - 0.3 / (3.2 + below)))
    return figure


def legend_that_fits(figure, handles: list, labels: list[str]):
    """A legend at the bottom of ``figure`` with as many columns (6 at most) as fit its width; where one label alone
    is wider, the labels are wrapped."""
    import textwrap

    renderer = figure.canvas.get_renderer()
    for columns in range(min(6, len(labels)), 0, -1):
        legend = figure.legend(handles, labels, loc="lower center", ncol=columns, frameon=False, fontsize="small")
        width = legend.get_window_extent(renderer).width
        if width <= 0.98 * figure.bbox.width:
            return legend
        legend.remove()
    chars = max(12, int(max(map(len, labels)) * 0.98 * figure.bbox.width / width))
    return figure.legend(handles, [textwrap.fill(label, chars) for label in labels], loc="lower center", ncol=1,
                         frameon=False, fontsize="small")


def honest_y(axis, lines: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The y range of a panel of metrics that are never negative: from 0 to a little over the highest value, so a
    change of 0.002 on a value of 39 looks as small as it is, not as the whole height of the panel. Where frame 1
    (made from the input frame 0, which no later frame is) lies far above every later frame, the axis ends over the
    later frames and frame 1's value is written at the top, instead of flattening them. ``lines``: (frames, values)."""
    values = np.concatenate([y[np.isfinite(y)] for _, y in lines]) if lines else np.array([])
    if not values.size:
        return
    later = np.concatenate([y[(x > 1) & np.isfinite(y)] for x, y in lines])
    top, bottom = float(values.max()), min(0.0, float(values.min()))
    if later.size and later.max() > 0 and top > 3 * later.max():
        axis.set_ylim(bottom, float(later.max()) * 1.25)
        axis.plot([1], [float(later.max()) * 1.25], marker="^", color="0.3", clip_on=False)
        axis.annotate(f"frame 1 up to {shown(top, '.3g')}, above the axis", xy=(0.98, 0.97), xycoords="axes fraction",
                      ha="right", va="top", fontsize="x-small", color="0.3")
    else:
        axis.set_ylim(bottom, top * 1.08 if top > 0 else 1.0)
