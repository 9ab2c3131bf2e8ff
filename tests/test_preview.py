"""Previews: the labelled contact sheet PNG and side-by-side GIF, cell sizes, captions."""

from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageSequence

from qvedit.report.previews import (
    EDITED_TEXTS,
    GAP,
    NO_EDGE_TEXTS,
    _no_edge_cell,
    cell_size,
    contact_sheet,
    frame_label,
    preview_layout,
    sampled_rows,
    shown_frames_caption,
    side_by_side_gif,
    write_previews,
)

DARK = 100  # text is drawn near-black on a light (240) background


def clip(count, width=30, height=20, step=2):
    """``count`` RGB frames (a square moving right on a gradient) and their T-1 grey edge images."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(0, 80, width, dtype=np.uint8)
    for i in range(count):
        frames[i, 4:12, 2 + step * i:10 + step * i] = (230, 60, 20)
    images = [Image.fromarray(f) for f in frames]
    edges = [Image.fromarray(np.abs(np.diff(f.astype(int), axis=1, prepend=0)).max(-1).astype(np.uint8))
             for f in frames[1:]]
    return edges, images


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def crop(array, box):
    left, top, right, bottom = box
    return array[top:bottom, left:right]


def dark_pixels(array):
    return int((array.max(axis=-1) < DARK).sum())


def enlarged(frame, factor):
    """``frame`` scaled up by a whole ``factor``: each pixel a factor x factor block (nearest neighbour)."""
    return np.asarray(frame).repeat(factor, axis=0).repeat(factor, axis=1)


def test_cell_size_rule():
    assert cell_size((64, 64)) == (192, 192)  # x3: crisp pixels
    assert cell_size((30, 20)) == (210, 140)  # x7
    assert cell_size((100, 50)) == (200, 100)  # x2
    assert cell_size((90, 90)) == (192, 192)  # x3 would be 270 > 256: exactly 192
    assert cell_size((200, 150)) == (200, 150)  # readable already
    assert cell_size((600, 300)) == (256, 128)
    assert cell_size((600, 400)) == (256, 171)
    for side in range(1, 700, 7):
        cell = cell_size((side, max(1, side // 2)))
        assert 192 <= max(cell) <= 256 and cell_size(cell) == cell


def test_shown_frames_caption():
    assert (shown_frames_caption(sampled_rows(9, 8), 9)
            == "frames 0, 1, 2, 3, 5, 6, 7, 8 of 0..8 (8 of 9 shown; frame 4 skipped)")
    assert shown_frames_caption([0, 1, 3, 5], 6) == "frames 0, 1, 3, 5 of 0..5 (4 of 6 shown; frames 2, 4 skipped)"
    assert shown_frames_caption(sampled_rows(9, 9), 9) == "all 9 frames (0..8)"
    assert shown_frames_caption([0], 1) == "1 frame (0)"
    long = shown_frames_caption(sampled_rows(1000, 8), 1000)
    assert long.startswith("frames 0, ") and long.endswith(", 999 of 0..999 (8 of 1000 shown)")
    assert frame_label(3) == "frame 3" and frame_label(3, 9) == "frame 3 / 8"


def test_contact_sheet_of_a_64px_clip_is_labelled_and_enlarged(tmp_path):
    edges, frames = clip(9, width=64, height=64, step=5)
    indices = sampled_rows(9, 8)
    assert indices == [0, 1, 2, 3, 5, 6, 7, 8]
    layout = preview_layout((192, 192), len(indices), [shown_frames_caption(indices, 9)],
                            [frame_label(i) for i in indices])
    sheet = pixels(contact_sheet(edges, frames, tmp_path / "sheet.png", max_rows=8))

    assert sheet.shape[1::-1] == layout.size
    assert sheet.shape[1] > 2 * 192 + 40 and sheet.shape[0] > 8 * 192 + 30  # label column, title band
    assert layout.title >= 16 and layout.label >= 40
    assert sheet.shape[0] == layout.title + layout.header + 8 * (192 + GAP)  # one row per sampled frame
    for row, index in enumerate(indices):
        assert np.array_equal(crop(sheet, layout.cell_box(row, 1)), enlarged(frames[index], 3))
        if index:
            assert np.array_equal(crop(sheet, layout.cell_box(row, 0)), enlarged(edges[index - 1].convert("RGB"), 3))
        assert dark_pixels(crop(sheet, layout.label_box(row))) > 20, f"row {row} has no label"
    # frame 0 has no edge map: a grey cell that says so, not a black one
    first_edge = crop(sheet, layout.cell_box(0, 0))
    assert first_edge.mean() > 100 and dark_pixels(first_edge) > 50
    assert dark_pixels(sheet[:layout.title]) > 100  # the caption
    header = sheet[layout.title:layout.title + layout.header]
    for column in (0, 1):
        left, _, right, _ = layout.cell_box(0, column)
        assert dark_pixels(header[:, left:right]) > 30, f"column {column} has no title"
    assert dark_pixels(header[:, :layout.label]) == 0


def test_contact_sheet_rows_and_sizes(tmp_path):
    edges, frames = clip(11)
    sheet_path = contact_sheet(edges, frames, tmp_path / "sheet.png", max_rows=4)
    indices = sampled_rows(11, 4)
    assert indices == [0, 3, 7, 10]
    layout = preview_layout((210, 140), 4, [shown_frames_caption(indices, 11)], [frame_label(i) for i in indices])
    sheet = pixels(sheet_path)
    assert sheet.shape[1::-1] == layout.size
    assert np.array_equal(crop(sheet, layout.cell_box(0, 1)), enlarged(frames[0], 7))
    assert np.array_equal(crop(sheet, layout.cell_box(3, 1)), enlarged(frames[10], 7))  # last frame is the last row
    assert crop(sheet, layout.cell_box(0, 0)).any()  # the init frame's edge cell is not black

    big = [frame.resize((600, 400)) for frame in frames[:3]]
    big_sheet = pixels(contact_sheet(edges[:2], big, tmp_path / "big.png"))
    big_layout = preview_layout((256, 171), 3, [shown_frames_caption([0, 1, 2], 3)], ["frame 0", "frame 1", "frame 2"])
    assert big_sheet.shape[1::-1] == big_layout.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "sheet.png"]  # no partial files left


def test_large_frame_is_scaled_down_to_256(tmp_path):
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 600, 3), dtype=np.uint8))
    edge = frame.convert("L")
    sheet = pixels(contact_sheet([edge, edge], [frame, frame], tmp_path / "sheet.png"))
    layout = preview_layout((256, 128), 2, [shown_frames_caption([0, 1], 2)], ["frame 0", "frame 1"])
    assert cell_size(frame.size) == (256, 128) and sheet.shape[1::-1] == layout.size
    expected = np.asarray(frame.resize((256, 128), Image.Resampling.BOX))
    assert np.array_equal(crop(sheet, layout.cell_box(1, 1)), expected)
    assert np.array_equal(crop(sheet, layout.cell_box(0, 0)),  # T edge images: frame 0 has its own
                          np.asarray(edge.resize((256, 128), Image.Resampling.BOX).convert("RGB")))


def test_gif_has_one_labelled_frame_per_clip_frame(tmp_path):
    edges, frames = clip(11)
    gif = side_by_side_gif(edges, frames, tmp_path / "pairs.gif", fps=10)
    layout = preview_layout((210, 140), 1, [frame_label(i, 11) for i in range(11)])
    with Image.open(gif) as image:
        assert image.size == layout.size
        assert image.info["duration"] == 100 and image.info["loop"] == 0
        animation = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
    assert len(animation) == 11
    titles = [a[:layout.title] for a in animation]
    for shown in animation:
        assert dark_pixels(shown[:layout.title]) > 40  # "frame i / 10"
        assert dark_pixels(shown[layout.title:layout.title + layout.header]) > 40  # column titles
    assert all(not np.array_equal(a, b) for a, b in pairwise(titles))  # "frame i / 10" changes
    first_edge = crop(animation[0], layout.cell_box(0, 0))
    assert first_edge.mean() > 100 and dark_pixels(first_edge) > 50  # frame 0: grey "input frame" cell
    assert layout.size[0] < 2 * 210 + 40  # no label column in the GIF
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.gif"]


@pytest.mark.parametrize("fps, delay", [(10, 100), (60, 20), (4, 250), (30, 30)])
def test_gif_delay(tmp_path, fps, delay):
    edges, frames = clip(3)
    with Image.open(side_by_side_gif(edges, frames, tmp_path / "a.gif", fps=fps)) as image:
        assert image.info["duration"] == delay and image.n_frames == 3


def test_bad_arguments(tmp_path):
    edges, frames = clip(4)
    with pytest.raises(ValueError, match="2 edge images for 4 frames"):
        contact_sheet(edges[:2], frames, tmp_path / "a.png")
    with pytest.raises(ValueError, match="max_rows"):
        contact_sheet(edges, frames, tmp_path / "a.png", max_rows=0)
    with pytest.raises(ValueError, match="fps"):
        side_by_side_gif(edges, frames, tmp_path / "a.gif", fps=0)
    with pytest.raises(ValueError, match="no frames"):
        contact_sheet([], [], tmp_path / "a.png")
    assert not list(tmp_path.iterdir())


def test_write_previews_reads_frames_and_edges(tmp_path):
    edges, frames = clip(5, width=600, height=400, step=40)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i:05d}.png")
        frame.save(paths[-1])

    asked = []

    class Source:
        fps = 8.0

        def edge_frame(self, k, size):
            asked.append((k, size))
            return edges[k].convert("RGB").resize(size)

    run = SimpleNamespace(previews=(tmp_path / "preview.png", tmp_path / "preview.gif"))
    written = write_previews(Source(), paths, run)
    assert written == list(run.previews) and asked == [(k, (600, 400)) for k in range(4)]
    sheet = preview_layout((256, 171), 5, [shown_frames_caption(list(range(5)), 5)],
                           [frame_label(i) for i in range(5)])
    with Image.open(written[0]) as image:
        assert image.size == sheet.size
    with Image.open(written[1]) as image:
        assert image.n_frames == 5 and image.info["duration"] == 120
    input_cell = crop(pixels(written[0]), sheet.cell_box(0, 0))
    assert np.array_equal(input_cell, np.asarray(_no_edge_cell((256, 171), NO_EDGE_TEXTS)))  # "input frame (copied)"

    Source.frame0_edited = True  # frame 0 made by first_frame.prompt (qvedit.run.first_frame.EditedFirstFrame)
    edited_cell = crop(pixels(write_previews(Source(), paths, run)[0]), sheet.cell_box(0, 0))
    assert np.array_equal(edited_cell, np.asarray(_no_edge_cell((256, 171), EDITED_TEXTS)))  # "frame 0 edited"
    assert not np.array_equal(edited_cell, input_cell)
