"""Drift shown: the acceptance report's drift tables (guided against its ttlg=off twins, per setting) and the drift
plot of a run or a sweep. The measures they show (``edge_offset_px``, each drift column's trend over the frames)
are ``qvedit.scoring.drift``'s.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from qvedit.scoring.drift import DRIFT_COLUMNS, Trend, median_trends, shown


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


def plot_drift(clips: dict[str, dict], frames: Optional[int], title: str, out,
               keyframes: Sequence[int] = ()) -> Optional[object]:
    """``drift_figure`` written as a PNG at ``out``; returns it, None when no drift column is there."""
    from qvedit.core.files import write_figure_png

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
