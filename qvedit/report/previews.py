"""Previews of an edited clip: a contact sheet PNG and a side-by-side GIF of ``edge | output``.

Both take the output frames 0..T-1 and either T edge images (edge i next to frame i) or T-1 (the
edge of frame i is ``edge_images[i-1]``; frame 0, the input frame copied unchanged, has no edge map
and gets a grey cell that says so). Every cell has the size ``cell_size`` gives for frame 0.

    contact sheet                        GIF, one animation frame per clip frame
    +-------------------------------+    +------------------------+
    | frames 0, 1, 2, ... (8 of 9)  |    | frame 3 / 8            |
    |          edge map   output    |    | edge map    output     |
    | frame 0  [cell]     [cell]    |    | [cell]      [cell]     |
    | frame 1  [cell]     [cell]    |    +------------------------+
    | ...                           |
    +-------------------------------+
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from qvedit.core.files import atomic_path
from qvedit.core.images import read_rgb8
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource

MAX_CELL_SIDE = 256
MIN_CELL_SIDE = 192
COLUMN_TITLES = ("edge map", "output")
# frame 0's grey edge cell: the first wording that fits the cell, else none
NO_EDGE_TEXTS = (("input frame", "(copied)", "no edge map"), ("input frame (copied)",), ("input frame",), ("input",))
# ... where frame 0 is the source's frame 0 edited with first_frame.prompt (a source whose frame0_edited is true)
EDITED_TEXTS = (("frame 0 edited", "(first_frame.prompt)", "no edge map"), ("frame 0 edited",), ("edited",))

FONT_SIZE = 14
TITLE_FONT_SIZE = 16
PAD = 8  # margin around text
GAP = 4  # between cells
BACKGROUND = (240, 240, 240)
TEXT = (20, 20, 20)
NO_EDGE_GREY = (170, 170, 170)

Size = tuple[int, int]  # (W, H) in pixels


def cell_size(size: Size, max_side: int = MAX_CELL_SIDE, min_side: int = MIN_CELL_SIDE) -> Size:
    """The (W, H) of a preview cell for frames of ``size`` = (W, H); the aspect ratio is kept.

    - long side above ``max_side`` (256): scaled down to a long side of ``max_side`` (drawn with a
      box filter);
    - long side in ``min_side``..``max_side`` (192..256): unchanged;
    - long side below ``min_side``: scaled up (drawn nearest-neighbour) by the smallest whole factor
      that reaches ``min_side``, so each pixel becomes a crisp n x n block (64 -> 192, 30 -> 210,
      100 -> 200). Where that factor overshoots ``max_side`` (long sides 86..95 and 129..191), the
      long side becomes exactly ``min_side`` instead.

    The rule is idempotent: ``cell_size(cell_size(s)) == cell_size(s)``, so frames already shrunk to
    the cell give the same cell.
    """
    width, height = size
    long_side = max(width, height)
    if long_side > max_side:
        scale = max_side / long_side
    elif long_side >= min_side:
        return width, height
    elif math.ceil(min_side / long_side) * long_side <= max_side:
        return width * math.ceil(min_side / long_side), height * math.ceil(min_side / long_side)
    else:
        scale = min_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def sampled_rows(count: int, max_rows: int) -> list[int]:
    """Up to ``max_rows`` frame indices evenly spread over 0..count-1, first and last included."""
    if count <= max_rows:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, max_rows).round()})


def shown_frames_caption(indices: list[int], total: int) -> str:
    """Which of the frames 0..total-1 a preview shows, e.g. ``all 9 frames (0..8)`` or
    ``frames 0, 1, 2, 3, 5, 6, 7, 8 of 0..8 (8 of 9 shown; frame 4 skipped)``; up to 3 skipped frames are
    named ("frames 4, 7 skipped")."""
    if total < 1:
        raise ValueError(f"total={total} must be >= 1")
    if list(indices) == list(range(total)):
        return "1 frame (0)" if total == 1 else f"all {total} frames (0..{total - 1})"
    shown = set(indices)
    skipped = [i for i in range(total) if i not in shown]
    named = f"frame {skipped[0]}" if len(skipped) == 1 else f"frames {', '.join(map(str, skipped))}"
    note = f"; {named} skipped" if len(skipped) <= 3 else ""  # more: "8 of 1000 shown" says it
    return (f"frames {', '.join(map(str, indices))} of 0..{total - 1} "
            f"({len(indices)} of {total} shown{note})")


def frame_label(index: int, total: int | None = None) -> str:
    """``frame 3``, or ``frame 3 / 8`` given the clip's ``total`` frame count."""
    return f"frame {index}" if total is None else f"frame {index} / {total - 1}"


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px; its fixed-size bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _line_height(font) -> int:
    return font.getbbox("Ag|(")[3] + 2


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` where the words allow."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line]


@dataclass(frozen=True)
class PreviewLayout:
    """Where things go on one preview image: a title band (``title`` px high), a band of column titles
    (``header`` px), then ``rows`` rows of ``[label |] edge | output``. Cells are ``cell`` (W, H),
    centred in columns ``column`` px wide and rows ``row`` px high, ``GAP`` px apart."""

    cell: Size
    column: int
    row: int
    label: int  # label column width; 0: no label column
    title: int
    header: int
    rows: int
    columns: tuple[str, ...] = COLUMN_TITLES

    @property
    def size(self) -> Size:
        return (self.label + GAP + len(self.columns) * (self.column + GAP),
                self.title + self.header + self.rows * (self.row + GAP))

    def row_top(self, row: int) -> int:
        return self.title + self.header + row * (self.row + GAP)

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell; column 0 is the edge map, then the outputs."""
        left = self.label + GAP + column * (self.column + GAP) + (self.column - self.cell[0]) // 2
        top = self.row_top(row) + (self.row - self.cell[1]) // 2
        return left, top, left + self.cell[0], top + self.cell[1]

    def label_box(self, row: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a row's label cell."""
        return 0, self.row_top(row), self.label, self.row_top(row) + self.row


def preview_layout(cell: Size, rows: int, titles: list[str], labels: list[str] | None = None,
                   columns: tuple[str, ...] = COLUMN_TITLES) -> PreviewLayout:
    """The layout for ``rows`` rows of ``cell``; tall enough for the longest of ``titles`` (wrapped to
    the image width) and wide enough for the ``columns``' titles and the row ``labels`` (None: no label
    column)."""
    font, title_font = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    line = _line_height(font)
    column = max(cell[0], *(math.ceil(font.getlength(t)) + 2 * GAP for t in columns))
    label = max(math.ceil(font.getlength(t)) for t in labels) + 2 * PAD if labels else 0
    width = label + GAP + len(columns) * (column + GAP)
    lines = max(len(_wrap(t, title_font, width - 2 * PAD)) for t in titles)
    return PreviewLayout(cell=cell, column=column, row=max(cell[1], line), label=label,
                         title=PAD + lines * _line_height(title_font) + PAD // 2, header=line + GAP, rows=rows,
                         columns=tuple(columns))


def _fit(image: Image.Image, cell: Size) -> Image.Image:
    """``image`` as RGB of size ``cell``: box filter when shrinking, nearest neighbour when enlarging."""
    image = image.convert("RGB")
    if image.size == cell:
        return image
    shrink = image.width > cell[0] or image.height > cell[1]
    return image.resize(cell, Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)


def _shrunk(image: Image.Image, cell: Size) -> Image.Image:
    """``image`` scaled down to ``cell`` if larger, else as it is (enlarged only when drawn)."""
    return image.resize(cell, Image.Resampling.BOX) if image.width > cell[0] or image.height > cell[1] else image


def _no_edge_cell(cell: Size, wordings: tuple = NO_EDGE_TEXTS) -> Image.Image:
    """A grey ``cell`` saying what frame 0 is (the input frame, or ``EDITED_TEXTS``: the source's edited), with no
    edge map: the first of ``wordings`` that fits."""
    image = Image.new("RGB", cell, NO_EDGE_GREY)
    draw = ImageDraw.Draw(image)
    for size in (FONT_SIZE, 10):
        font = _font(size)
        line = _line_height(font)
        for texts in wordings:
            if line * len(texts) <= cell[1] and all(font.getlength(t) <= cell[0] - 2 for t in texts):
                top = (cell[1] - line * len(texts)) // 2
                for k, text in enumerate(texts):
                    draw.text(((cell[0] - font.getlength(text)) / 2, top + k * line), text, fill=TEXT, font=font)
                return image
    return image


def _compose(layout: PreviewLayout, title: str, rows: list[tuple], no_edge: Image.Image) -> Image.Image:
    """One preview image: ``title``, column titles, then per row (label, edge or None, frame, ...)."""
    image = Image.new("RGB", layout.size, BACKGROUND)
    draw, font, title_font = ImageDraw.Draw(image), _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    for k, line in enumerate(_wrap(title, title_font, layout.size[0] - 2 * PAD)):
        draw.text((PAD, PAD + k * _line_height(title_font)), line, fill=TEXT, font=title_font)
    for column, text in enumerate(layout.columns):
        left = layout.label + GAP + column * (layout.column + GAP)
        draw.text((left + (layout.column - font.getlength(text)) / 2, layout.title), text, fill=TEXT, font=font)
    for position, (label, edge, *frames) in enumerate(rows):
        if label:
            top = layout.row_top(position) + (layout.row - _line_height(font)) // 2
            draw.text((PAD, top), label, fill=TEXT, font=font)
        image.paste(no_edge if edge is None else _fit(edge, layout.cell), layout.cell_box(position, 0)[:2])
        for column, frame in enumerate(frames, start=1):
            image.paste(_fit(frame, layout.cell), layout.cell_box(position, column)[:2])
    return image


def _pairs(edge_images: list, frames: list) -> list:
    """Edge image (or None for frame 0's no-edge cell) of each frame, aligned with ``frames``."""
    if not frames:
        raise ValueError("no frames to preview")
    if len(edge_images) == len(frames) - 1:
        return [None, *edge_images]
    if len(edge_images) == len(frames):
        return list(edge_images)
    raise ValueError(f"{len(edge_images)} edge images for {len(frames)} frames: expected {len(frames)} or "
                     f"{len(frames) - 1}")


def _save_atomic(image: Image.Image, out_path: Path, fmt: str, **options) -> Path:
    with atomic_path(out_path) as partial:
        image.save(partial, format=fmt, **options)
    return Path(out_path)


def contact_sheet(edge_images: list, frames: list, out_path, max_rows: int = 8, frame0: tuple = NO_EDGE_TEXTS) -> Path:
    """A PNG with one labelled ``edge | output`` row per sampled frame (``sampled_rows``), under a title
    naming the frames shown and the column titles; ``preview_layout(...).size`` pixels.

    ``frames``: PIL images of frames 0..T-1, all of frame 0's size or already shrunk to its cell; ``frame0``: what
    frame 0's grey edge cell says (``NO_EDGE_TEXTS`` or ``EDITED_TEXTS``).
    """
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    edges = _pairs(edge_images, frames)
    cell = cell_size(frames[0].size)
    indices = sampled_rows(len(frames), max_rows)
    labels = [frame_label(i) for i in indices]
    title = shown_frames_caption(indices, len(frames))
    layout = preview_layout(cell, len(indices), [title], labels)
    rows = [(label, edges[i], frames[i]) for label, i in zip(labels, indices)]
    return _save_atomic(_compose(layout, title, rows, _no_edge_cell(cell, frame0)), out_path, "PNG")


def side_by_side_gif(edge_images: list, frames: list, out_path, fps: float, frame0: tuple = NO_EDGE_TEXTS) -> Path:
    """An animated GIF, looping, of ``edge | output`` for every frame, at ``fps`` frames per second;
    each animation frame is titled ``frame i / T-1`` and has the column titles.

    GIF delays are whole hundredths of a second and browsers slow delays under 0.02 s down, so the
    delay is 1/fps rounded to 10 ms, at least 20 ms.
    """
    return comparison_gif(edge_images, {COLUMN_TITLES[1]: frames}, out_path, fps, frame0)


def comparison_gif(edge_images: list, clips: dict[str, list], out_path, fps: float,
                   frame0: tuple = NO_EDGE_TEXTS) -> Path:
    """``side_by_side_gif`` with several clips of the same frames side by side: ``edge | clip | clip ...``,
    each column titled with its key in ``clips`` (e.g. ``{"ttlg=off": [...], "guided": [...]}``)."""
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0")
    columns = list(clips.values())
    count = min(len(frames) for frames in columns)
    columns = [frames[:count] for frames in columns]
    edges = _pairs(edge_images[:count - 1] if len(edge_images) >= count - 1 else edge_images, columns[0])
    cell = cell_size(columns[0][0].size)
    titles = [frame_label(i, count) for i in range(count)]
    layout = preview_layout(cell, 1, titles, columns=(COLUMN_TITLES[0], *clips))
    no_edge = _no_edge_cell(cell, frame0)

    def animation() -> Iterator[Image.Image]:
        # One at a time: Pillow keeps each as a palette image, a third of the RGB.
        for i, (title, edge) in enumerate(zip(titles, edges)):
            yield _compose(layout, title, [(None, edge, *(frames[i] for frames in columns))], no_edge)

    images = animation()
    delay = max(20, round(100.0 / fps) * 10)
    return _save_atomic(next(images), out_path, "GIF", save_all=True, append_images=images, duration=delay, loop=0)


def candidate_sheet(source: Image.Image, candidates: list[Image.Image], labels: list[str], title: str,
                    out_path) -> Path:
    """A PNG of one row ``source frame 0 | candidate 0 | candidate 1 ...`` (``first_frame.prompt``): the
    columns titled ``labels`` (the source's first), under ``title``; cells as ``contact_sheet``'s."""
    cell = cell_size(source.size)
    layout = preview_layout(cell, 1, [title], columns=tuple(labels))
    row = (None, _shrunk(source, cell), *(_shrunk(image, cell) for image in candidates))
    return _save_atomic(_compose(layout, title, [row], _no_edge_cell(cell)), out_path, "PNG")


def write_previews(source: FrameSource, frame_paths: list[Path], layout: RunLayout) -> list[Path]:
    """``preview.png`` (contact sheet) and ``preview.gif`` (edge | output) of a finished clip.

    ``source`` gives the edge frames; frames are read one at a time and shrunk to the preview cell
    size at once (small frames are kept as they are and enlarged only when drawn), so memory stays
    small for long clips.
    """
    frames, edges = [], []
    cell = None
    for index, path in enumerate(frame_paths):
        frame = read_rgb8(Path(path))
        cell = cell or cell_size(frame.size)
        frames.append(_shrunk(frame, cell))
        if index:
            edges.append(_shrunk(source.edge_frame(index - 1, frame.size), cell))
    sheet, gif = layout.previews
    frame0 = EDITED_TEXTS if getattr(source, "frame0_edited", False) else NO_EDGE_TEXTS
    return [contact_sheet(edges, frames, sheet, frame0=frame0),
            side_by_side_gif(edges, frames, gif, source.fps, frame0)]


def write_comparison(source: FrameSource, clips: dict[str, list[Path]], out: Path) -> Path:
    """An ``edge | clip | clip ...`` GIF of clips of the same source (``{"ttlg=off": paths, ...}``),
    frames read one at a time and shrunk to the cell size as ``write_previews`` does."""
    shrunk: dict[str, list] = {title: [] for title in clips}
    edges, cell = [], None
    for index in range(min(len(paths) for paths in clips.values())):
        for title, paths in clips.items():
            frame = read_rgb8(Path(paths[index]))
            cell = cell or cell_size(frame.size)
            shrunk[title].append(_shrunk(frame, cell))
        if index:
            edges.append(_shrunk(source.edge_frame(index - 1, frame.size), cell))
    return comparison_gif(edges, shrunk, out, source.fps,
                          EDITED_TEXTS if getattr(source, "frame0_edited", False) else NO_EDGE_TEXTS)
