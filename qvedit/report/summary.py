"""What a finished run tells its user: what was made, what guidance did, where to look, what to try next."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from qvedit.scoring.drift import clip_trends, describe, shown

QUALITY = ("edge_loss", "gram_loss", "warp_error", "color_drift", "edge_offset_px", "lpips_to_prev")


def column_means(metrics_text: str) -> dict[str, float]:
    """Mean of each numeric column of a ``metrics.csv``'s text over the frames that have a value in it (an empty
    cell is none; a NaN loss makes its column's mean NaN, said as n/a); empty when it has no rows."""
    rows = list(csv.DictReader(io.StringIO(metrics_text)))
    means = {}
    for column in (rows[0] if rows else {}):
        values = [float(row[column]) for row in rows if row.get(column) not in (None, "")]
        if values:
            means[column] = sum(values) / len(values)
    return means


def run_summary(frames: list[Path], frames_kept: bool, outputs: list[Path], metrics: pd.DataFrame,
                means: dict[str, float], metrics_csv: Path, steps: int, scales: dict[str, float],
                unguided: Optional[tuple[dict[str, float], Path]] = None,
                demo: bool = False, flow_from_edges: bool = False, frame0: Optional[str] = None,
                keyframes: Sequence[int] = (), anchor: Optional[str] = None,
                video_notes: tuple[str, ...] = ()) -> list[str]:
    """The lines printed at the end of a run.

    ``metrics``: the clip's metrics table (written to ``metrics_csv``) and ``means`` its columns' means
    (``column_means``); ``scales``: the guidance weights that are on ({"edge": 1.0, ...}); ``unguided``: the
    column means of the same clip made without guidance (``compare_unguided=true``) and its folder; ``demo``: add the
    next steps a newcomer takes after the demo; ``flow_from_edges``: the warp error's flow came from edge maps;
    ``frame0``: where frame 0 came from when it is not the input (``first_frame.prompt``); ``keyframes``: the
    keyframes of ``schedule=segments`` (the seams' warp error is said beside the segments'); ``anchor``: what held
    the clip to frame 0 (``AnchorSettings.describe``), None when nothing did; ``video_notes``: what the mp4 holds
    (frames, rate, size, sound: ``VideoClip.video_notes``).
    """
    where = frames[0].parent if frames_kept else ", ".join(str(p) for p in outputs if p.suffix == ".mp4")
    origin = "the input" if frame0 is None else "the edited first frame"
    lines = [f"qvedit: made frames 1..{len(frames) - 1} of {len(frames)} (frame 0 is {origin}) -> {where}"
             + ("" if frames_kept else " (PNG frames deleted: io.keep_frames=false)")]
    if frame0 is not None:
        lines.append(f"  {frame0}")
    videos = [p for p in outputs if p.suffix == ".mp4"]
    if videos:  # io=video: the mp4 is what most users came for
        notes = f" ({'; '.join(video_notes)})" if video_notes else ""
        lines.append(f"  video: {', '.join(str(p) for p in videos)}{notes}")
    if scales:
        weights = ", ".join(f"{name} {value:g}" for name, value in scales.items())
        guided = f"{means['guided_steps']:.3g}" if "guided_steps" in means else "?"
        lines.append(f"  guidance {weights}: {guided} of {steps} denoising steps per frame took a guidance step")
    else:
        lines.append("  guidance off (ttlg=off): try ttlg=edge_gram")
    if anchor:
        lines.append(f"  {anchor}")
    measured = [f"{name} {shown(means[name])}" for name in QUALITY if name in means]
    if measured:
        lines.append(f"  mean over frames: {', '.join(measured)} ({metrics_csv})")
    trends = clip_trends(metrics) if means else {}
    if trends:
        lines.append(f"  drift, last quarter of the frames (growth over the first quarter, slope): {describe(trends)}")
    if keyframes and means:
        lines.append(seams_line(metrics, keyframes))
    if flow_from_edges and "warp_error" in means:
        lines.append("  warp_error: flow estimated between edge maps (set io.source_frames_dir to the original frames)")
    if unguided is not None:
        lines += compare_to_unguided(means, *unguided)
    sheet = [p for p in outputs if p.name == "preview.png"]
    if sheet:
        lines.append(f"  look: {sheet[0]} (edge map | output for each frame) and {sheet[0].with_suffix('.gif')}")
    if demo:
        lines += ["next:",
                  "  python -m qvedit experiment=acceptance_demo -m      guided vs unguided over 3 seeds, "
                  "verdict in the sweep's acceptance.md",
                  "  python -m qvedit experiment=tiny_cpu io.init_frame=INIT.png io.edge_frames_dir=EDGES/   "
                  "your own frames (tiny model, CPU)",
                  "  python -m qvedit --help                             groups, keys, the real model on a GPU"]
    return lines


def seams_line(metrics: pd.DataFrame, keyframes: Sequence[int]) -> str:
    """``segments: keyframes 16, 32, hops at most 17; warp_error at the 2 seams 0.04 vs 0.02 inside the segments``"""
    shown = ", ".join(map(str, keyframes[:6])) + (", ..." if len(keyframes) > 6 else "")
    line = f"  segments: keyframes {shown}"
    if "hops" in metrics:
        line += f", hops at most {int(metrics['hops'].max())}"
    if "warp_error" in metrics and metrics["warp_error"].notna().any():
        at_seams = metrics["frame"].isin(keyframes)
        seams, inside = metrics.loc[at_seams, "warp_error"].mean(), metrics.loc[~at_seams, "warp_error"].mean()
        line += (f"; warp_error at the {int(at_seams.sum())} seams (a segment's last frame to the keyframe after it) "
                 f"{seams:.4g} vs {inside:.4g} inside the segments")
    return line


def compare_to_unguided(guided: dict[str, float], unguided: dict[str, float], folder: Path) -> list[str]:
    """How the guided clip's losses compare with the same clip made without guidance."""
    pairs = [(name, guided[name], unguided[name]) for name in ("edge_loss", "gram_loss", "warp_error", "color_drift")
             if name in guided and name in unguided and unguided[name] > 0]
    if not pairs:
        return ["  unguided twin: no edge_loss / gram_loss to compare (metrics=none?)"]
    changes = ", ".join(f"{name} {shown(on)} vs {shown(off)} ({shown((on / off - 1) * 100, '+.0f')}%)"
                        for name, on, off in pairs)
    return [f"  guided vs unguided (the same clip made with ttlg=off in {folder}): {changes}"]
