"""Previews of an edited clip: a contact sheet PNG and a side-by-side GIF of ``edge | output``.

Both take the output frames 0..T-1 and either T edge images (edge i next to frame i) or T-1 (the
edge of frame i is ``edge_images[i-1]``; frame 0, the init frame, gets a black edge cell). Every
cell has the size of frame 0 scaled down to a long side of at most 256 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from qvedit.files import atomic_path
from qvedit.images import read_rgb8
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource

MAX_CELL_SIDE = 256


def cell_size(size: tuple[int, int], max_side: int = MAX_CELL_SIDE) -> tuple[int, int]:
    """(W, H) scaled down (never up) so that the long side is at most ``max_side``."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _pairs(edge_images: list, frames: list) -> list:
    """Edge image (or None for a blank cell) of each frame, aligned with ``frames``."""
    if not frames:
        raise ValueError("no frames to preview")
    if len(edge_images) == len(frames) - 1:
        return [None, *edge_images]
    if len(edge_images) == len(frames):
        return list(edge_images)
    raise ValueError(f"{len(edge_images)} edge images for {len(frames)} frames: expected {len(frames)} or "
                     f"{len(frames) - 1}")


def _row(edge: Image.Image | None, frame: Image.Image, cell: tuple[int, int]) -> Image.Image:
    """One ``edge | output`` pair, (2 * cell W) x (cell H) RGB."""
    row = Image.new("RGB", (2 * cell[0], cell[1]))
    if edge is not None:
        row.paste(edge.convert("RGB").resize(cell, Image.Resampling.BOX), (0, 0))
    row.paste(frame.convert("RGB").resize(cell, Image.Resampling.BOX), (cell[0], 0))
    return row


def _save_atomic(image: Image.Image, out_path: Path, fmt: str, **options) -> Path:
    with atomic_path(out_path) as partial:
        image.save(partial, format=fmt, **options)
    return Path(out_path)


def sampled_rows(count: int, max_rows: int) -> list[int]:
    """Up to ``max_rows`` frame indices evenly spread over 0..count-1, first and last included."""
    if count <= max_rows:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, max_rows).round()})


def contact_sheet(edge_images: list, frames: list, out_path, max_rows: int = 8) -> Path:
    """A PNG with one ``edge | output`` row per sampled frame; (2 * cell W) x (rows * cell H) pixels."""
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    edges = _pairs(edge_images, frames)
    cell = cell_size(frames[0].size)
    rows = sampled_rows(len(frames), max_rows)
    sheet = Image.new("RGB", (2 * cell[0], len(rows) * cell[1]))
    for position, index in enumerate(rows):
        sheet.paste(_row(edges[index], frames[index], cell), (0, position * cell[1]))
    return _save_atomic(sheet, out_path, "PNG")


def side_by_side_gif(edge_images: list, frames: list, out_path, fps: float) -> Path:
    """An animated GIF, looping, of ``edge | output`` for every frame, at ``fps`` frames per second.

    GIF delays are whole hundredths of a second and browsers slow delays under 0.02 s down, so the
    delay is 1/fps rounded to 10 ms, at least 20 ms. Pillow merges identical consecutive frames
    into one longer frame.
    """
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0")
    edges = _pairs(edge_images, frames)
    cell = cell_size(frames[0].size)
    rows = [_row(edge, frame, cell) for edge, frame in zip(edges, frames)]
    delay = max(20, int(round(100.0 / fps)) * 10)
    return _save_atomic(rows[0], out_path, "GIF", save_all=True, append_images=rows[1:], duration=delay,
                        loop=0)


def write_previews(source: FrameSource, frame_paths: list[Path], layout: RunLayout) -> list[Path]:
    """``preview.png`` (contact sheet) and ``preview.gif`` (edge | output) of a finished clip.

    ``source`` gives the edge frames; frames are read one at a time and shrunk to the preview cell
    size at once, so memory stays small for long clips.
    """
    frames, edges = [], []
    cell = None
    for index, path in enumerate(frame_paths):
        frame = read_rgb8(Path(path))
        cell = cell or cell_size(frame.size)
        frames.append(frame.resize(cell, Image.Resampling.BOX))
        if index:
            edges.append(source.edge_frame(index - 1, frame.size).resize(cell, Image.Resampling.BOX))
    sheet, gif = layout.previews
    return [contact_sheet(edges, frames, sheet), side_by_side_gif(edges, frames, gif, source.fps)]
