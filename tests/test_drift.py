"""Drift measures on hand-made frames, the colour defences, the clip trends and the drift criterion."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import color as skcolor

from qvedit.anchor.color import ColorAnchor, match_histogram, match_mean_std
from qvedit.core.color_stats import color_drift, lab_stats
from qvedit.core.images import to_tensor
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.guidance.losses import color_loss
from qvedit.io.frames import FrameFolders
from qvedit.scoring.drift import clip_trends, describe, edge_offset_px, judge_drift, trend
from qvedit.settings.anchor import AnchorSettings


def lab_image(lab: np.ndarray) -> Image.Image:
    """(H, W, 3) CIELAB inside the sRGB gamut -> 8-bit RGB."""
    return Image.fromarray(np.rint(np.clip(skcolor.lab2rgb(lab), 0, 1) * 255).astype(np.uint8))


@pytest.fixture
def scene():
    """A textured frame in the middle of the gamut, as CIELAB (48, 64, 3)."""
    rng = np.random.default_rng(0)
    lab = np.stack([50 + 8 * rng.standard_normal((48, 64)), 5 + 4 * rng.standard_normal((48, 64)),
                    10 + 4 * rng.standard_normal((48, 64))], axis=-1)
    return lab


@pytest.mark.parametrize("cast, expected", [((6, 0, 0), 6.0), ((0, 4, -3), 5.0), ((3, 0, 4), 5.0)])
def test_a_known_colour_cast_gives_its_size_in_lab_units(scene, cast, expected):
    first = lab_image(scene)
    cast_frame = lab_image(scene + np.array(cast))
    assert color_drift(lab_stats(first), lab_stats(first)) == 0
    assert color_drift(lab_stats(cast_frame), lab_stats(first)) == pytest.approx(expected, abs=0.3)


def test_a_change_of_contrast_counts_through_the_deviations(scene):
    first = lab_image(scene)
    flatter = lab_image(scene.mean(axis=(0, 1)) + 0.5 * (scene - scene.mean(axis=(0, 1))))  # half the deviations
    std = lab_stats(first).std
    assert color_drift(lab_stats(flatter), lab_stats(first)) == pytest.approx(np.linalg.norm(std / 2), rel=0.05)


def write_frames(folder, images):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:05d}.png")
    return folder


def test_a_scene_that_really_darkens_is_not_drift(tmp_path, scene):
    """The source darkens by 12 L and warms by 5 b from frame 0 to 2; an output that follows it has no drift,
    one that keeps frame 0's colours has drifted by that much."""
    source = [lab_image(scene + np.array(shift)) for shift in ((0, 0, 0), (-6, 0, 2), (-12, 0, 5))]
    edited = lab_image(scene + np.array((5, -3, 0)))  # frame 0: an edit of the source's frame 0
    sources = write_frames(tmp_path / "source", source)
    edges = write_frames(tmp_path / "edges", [Image.new("L", (64, 48))] * 2)
    edited.save(tmp_path / "init.png")
    anchor = ColorAnchor(AnchorSettings(), edited, FrameFolders(str(tmp_path / "init.png"), str(edges),
                                                                source_frames_dir=str(sources)))
    follows = lab_image(scene + np.array((5 - 12, -3, 5)))
    keeps = edited
    assert anchor.follows_source
    assert color_drift(lab_stats(follows), anchor.target(2)) < 0.3
    assert color_drift(lab_stats(keeps), anchor.target(2)) == pytest.approx(13.0, abs=0.4)
    without_source = ColorAnchor(AnchorSettings(), edited)
    assert not without_source.follows_source
    assert color_drift(lab_stats(keeps), without_source.target(2)) < 1e-9


def test_mean_std_matching_brings_a_cast_frame_back(scene):
    first = lab_image(scene)
    cast = lab_image(scene * np.array((0.8, 1.3, 1.2)) + np.array((8, -4, 6)))
    before = color_drift(lab_stats(cast), lab_stats(first))
    assert before > 8
    assert color_drift(lab_stats(match_mean_std(cast, lab_stats(first))), lab_stats(first)) < 0.1 * before
    half = color_drift(lab_stats(match_mean_std(cast, lab_stats(first), 0.5)), lab_stats(first))
    assert half == pytest.approx(before / 2, rel=0.1)
    assert np.array_equal(np.asarray(match_mean_std(cast, lab_stats(first), 0.0)), np.asarray(cast))


def test_histogram_matching_takes_the_reference_histograms(scene):
    first = lab_image(scene)
    cast = lab_image(scene + np.array((10, 5, -5)))
    matched = match_histogram(cast, first)
    for channel in range(3):
        assert np.quantile(np.asarray(matched)[..., channel], [0.1, 0.5, 0.9]) == pytest.approx(
            np.quantile(np.asarray(first)[..., channel], [0.1, 0.5, 0.9]), abs=2)
    assert color_drift(lab_stats(matched), lab_stats(first)) < 0.15 * color_drift(lab_stats(cast), lab_stats(first))
    assert np.array_equal(np.asarray(match_histogram(cast, first, 0.0)), np.asarray(cast))


def test_correct_follows_the_chosen_mode(tmp_path, scene):
    first, cast = lab_image(scene), lab_image(scene + np.array((10, 0, 0)))
    for mode in ("mean_std", "histogram"):
        fixed = ColorAnchor(AnchorSettings(color=mode), first).correct(cast, 3)
        assert color_drift(lab_stats(fixed), lab_stats(first)) < 1.5, mode
    assert ColorAnchor(AnchorSettings(color="none"), first).correct(cast, 3) is cast


def test_the_colour_loss_is_the_drift_squared_and_has_a_gradient(scene):
    first, cast = lab_image(scene), lab_image(scene + np.array((3, 0, 4)))
    target = lab_stats(first)
    image = to_tensor(cast).requires_grad_(True)
    loss = color_loss(image, torch.tensor(target.mean, dtype=torch.float32), torch.tensor(target.std,
                                                                                            dtype=torch.float32))
    assert math.sqrt(float(loss.detach())) == pytest.approx(color_drift(lab_stats(cast), target), abs=0.3)  # kornia vs skimage
    (grad,) = torch.autograd.grad(loss, image)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    step = (image - 0.02 * grad / grad.abs().max()).detach()
    assert float(color_loss(step, torch.tensor(target.mean, dtype=torch.float32),
                            torch.tensor(target.std, dtype=torch.float32))) < float(loss)


def shapes(size=(96, 80)) -> Image.Image:
    """Frame with a few sharp rectangles and a disc on a gradient."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / width, y / height, np.full_like(x, 0.3, dtype=float)], axis=-1)
    image[20:40, 15:45] = (0.9, 0.1, 0.1)
    image[50:70, 55:85] = (0.1, 0.2, 0.9)
    image[(x - 70) ** 2 + (y - 20) ** 2 < 100] = (1, 1, 0.2)
    return Image.fromarray((image * 255).astype(np.uint8))


@pytest.mark.parametrize("dx, dy", [(0, 0), (3, 4), (-5, 0), (2, -2)])
def test_edge_offset_is_the_shift_between_a_frame_and_its_edge_map(dx, dy):
    frame = shapes()
    edge = Image.fromarray(edges_to_uint8(sobel_edges(to_tensor(frame))))
    shifted = Image.fromarray(np.roll(np.asarray(frame), (dy, dx), axis=(0, 1)))
    assert edge_offset_px(shifted, edge) == pytest.approx(math.hypot(dx, dy), abs=0.5)


def test_trend_slope_and_growth():
    values = [1.0 + 0.5 * i for i in range(12)]  # frames 1..12
    result = trend(values, range(1, 13))
    assert result.slope == pytest.approx(0.5)
    assert result.last_quarter == pytest.approx(np.mean(values[-3:]))
    assert result.growth == pytest.approx(np.mean(values[-3:]) / np.mean(values[:3]))
    assert trend([2.0], [1]) is None
    table = pd.DataFrame({"frame": range(1, 13), "color_drift": values, "edge_offset_px": 1.0})
    trends = clip_trends(table)
    assert set(trends) == {"color_drift", "edge_offset_px"} and trends["edge_offset_px"].slope == pytest.approx(0)
    assert clip_trends(table, frames=4)["color_drift"].last_quarter == pytest.approx(values[3])


def test_a_growth_over_a_first_quarter_of_zero_says_n_a_never_nan(tmp_path):
    """A flat clip held to frame 0's colours (anchor=color on black frames) drifts by 0 at first: its growth has no
    value, and the summary, the tables and report.html say n/a."""
    from qvedit.report.html import _number
    from qvedit.report.summary import column_means, run_summary

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("frame,edge_loss,gram_loss,color_drift,seconds,guided_steps,peak_mem_mib\n" + "".join(
        f"{i},0.1,nan,{0.0 if i <= 4 else 0.5},1.0,2,10.0\n" for i in range(1, 9)))  # as csv writes a NaN loss
    trends = clip_trends(pd.read_csv(metrics))
    assert math.isnan(trends["color_drift"].growth)
    lines = run_summary([tmp_path / f"{i:05d}.png" for i in range(9)], True, [], pd.read_csv(metrics),
                        column_means(metrics.read_text()), metrics, 8, {"color": 1.0})
    text = "\n".join(lines)
    assert "color_drift 0.5 (xn/a, +0.0952/frame)" in text and "gram_loss n/a" in text
    assert "nan" not in text.lower()
    assert describe(trends).count("n/a") == 1 and _number(float("nan")) == "n/a" and _number(None) == "-"


def test_the_drift_criterion_compares_the_last_quarters_median_over_seeds():
    frames = 8

    def tables(last_quarter_levels):
        return {seed: pd.DataFrame({"frame": range(1, 11), "color_drift": [1.0] * 6 + [level] * 4})
                for seed, level in enumerate(last_quarter_levels)}

    # frames 1..8 are judged: the last quarter is frames 7, 8 (level), not 9, 10
    ratio, passed, note = judge_drift(tables([2.0, 4.0, 9.0]), tables([4.0, 8.0, 8.0]), frames, 1.0)
    assert ratio == pytest.approx(4.0 / 8.0) and passed and "frames 7..8" in note
    ratio, passed, _ = judge_drift(tables([9.0, 9.0, 1.0]), tables([4.0, 8.0, 8.0]), frames, 1.0)
    assert ratio == pytest.approx(9.0 / 8.0) and not passed
    assert judge_drift({0: pd.DataFrame({"frame": [1], "edge_loss": [1.0]})}, tables([1.0]), frames, 1.0)[0] is None


def test_anchor_frames_and_images():
    settings = AnchorSettings(every=3)
    assert [i for i in range(1, 10) if settings.from_first_frame(i)] == [3, 6, 9]
    assert settings.condition_images(4, "edge", "prev", "first") == ["edge", "prev"]
    assert settings.condition_images(6, "edge", "prev", "first") == ["edge", "first"]
    three = AnchorSettings(first_frame_image=True)
    assert three.condition_images(1, "edge", "prev", "first") == ["edge", "prev", "first"]
    assert three.prompt_for("two") == three.prompt and AnchorSettings().prompt_for("two") == "two"
    assert "图 3" in three.prompt


def test_edge_offset_of_a_large_frame_is_in_the_frames_own_pixels():
    """Frames longer than 512 pixels are aligned shrunk: the offset still counts full-size pixels."""
    frame = shapes((1100, 600)).resize((1100, 600))
    big = np.asarray(frame).copy()
    big[100:400, 300:700] = (30, 200, 40)
    frame = Image.fromarray(big)
    edge = Image.fromarray(edges_to_uint8(sobel_edges(to_tensor(frame))))
    shifted = Image.fromarray(np.roll(big, (0, 12), axis=(0, 1)))
    assert edge_offset_px(shifted, edge) == pytest.approx(12, abs=1.5)


def test_frames_too_small_to_align_get_no_offset():
    assert edge_offset_px(Image.new("RGB", (1, 1)), Image.new("L", (1, 1))) is None
    assert edge_offset_px(Image.new("RGB", (64, 4)), Image.new("L", (64, 4))) is None
