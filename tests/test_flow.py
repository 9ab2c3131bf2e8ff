"""Optical flow, warping, occlusion and the warp error, on synthetic motion whose true flow is known."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import cache_dir
from qvedit.guidance.optical_flow import DISFlow, FlowPair, RAFTFlow, occluded, resize_flow, warp, warp_error
from qvedit.io import clip_flow as flow_module
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.demo import DEMO_FOLDER, demo_clip, demo_frame
from qvedit.io.frames import FrameFolders
from qvedit.settings.guidance import FlowSettings
from tests.conftest import write_clip


def textured(height=64, width=80, seed=0) -> torch.Tensor:
    """(1, 3, H, W) smooth random texture in [0, 1] (flow needs structure to latch on to)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 8, width // 8), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def shifted(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The image moved by (dx, dy) pixels: out(x) = image(x - d); the uncovered border repeats."""
    flow = torch.tensor([-float(dx), -float(dy)]).view(1, 2, 1, 1).expand(1, 2, *image.shape[-2:])
    return warp(image, flow)


def test_warping_by_a_known_flow_reproduces_the_shifted_image():
    image = textured()
    moved = torch.roll(image, shifts=(2, 3), dims=(2, 3))  # dy=2, dx=3
    back = torch.tensor([-3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 64, 80)
    torch.testing.assert_close(warp(image, back)[..., 4:-4, 4:-4], moved[..., 4:-4, 4:-4], atol=1e-5, rtol=0)


def test_dis_recovers_a_known_translation():
    before = textured()
    now = shifted(before, 3, 2)
    backward = DISFlow()(now, before)  # now(x) ~ before(x + backward(x))
    interior = backward[0, :, 10:-10, 10:-10].reshape(2, -1).median(dim=1).values
    torch.testing.assert_close(interior, torch.tensor([-3.0, -2.0]), atol=0.35, rtol=0)


def test_raft_runs_at_any_size_with_random_weights():
    raft = RAFTFlow("random", torch.device("cpu"))
    out = raft(textured(36, 44), textured(36, 44, seed=1))  # sides not divisible by 8: padded, then cropped
    assert out.shape == (1, 2, 36, 44) and torch.isfinite(out).all()


def test_raft_weights_missing_offline_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(QveditError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth") as info:
        RAFTFlow("pretrained", torch.device("cpu"))
    assert "flow=dis" in str(info.value) and "\n" not in str(info.value)


def test_the_occlusion_check_marks_the_disoccluded_strip():
    """A square moves 4 px right over a still background: the strip it uncovers is occluded, nothing else."""
    height, width, left, top, side, step = 40, 48, 10, 12, 14, 4
    forward = torch.zeros(1, 2, height, width)
    forward[0, 0, top:top + side, left:left + side] = step  # where the square was, it moves right
    backward = torch.zeros(1, 2, height, width)
    backward[0, 0, top:top + side, left + step:left + step + side] = -step  # where it is, it came from the left
    expected = torch.zeros(1, 1, height, width, dtype=torch.bool)
    expected[0, 0, top:top + side, left:left + step] = True
    assert torch.equal(occluded(backward, forward), expected)


def test_warp_error_is_zero_along_the_true_flow_and_grows_with_flicker():
    before = textured()
    now = shifted(before, 3, 0)
    backward = torch.tensor([-3.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 64, 80).contiguous()
    valid = torch.ones(1, 1, 64, 80)
    valid[..., :3] = 0  # the uncovered columns: not in the previous frame
    pair = FlowPair(backward, valid)
    assert warp_error(now, before, pair) < 1e-10
    flicker = [warp_error((now + amount).clamp(0, 1), before, pair) for amount in (0.02, 0.05, 0.1)]
    assert flicker[0] > 1e-4 and flicker == sorted(flicker)
    assert abs(flicker[1] - 3 * 0.05 ** 2) < 0.2 * 3 * 0.05 ** 2  # per-pixel squared RGB distance


def test_resized_flow_scales_its_vectors():
    flow = torch.ones(1, 2, 10, 20) * torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    bigger = resize_flow(flow, (20, 60))
    torch.testing.assert_close(bigger[0, :, 5, 5], torch.tensor([6.0, 2.0]))


def test_the_demo_clips_flow_follows_the_ball():
    """The ball moves 3 px right per frame: the backward flow on it points 3 px left; little is occluded."""
    home = cache_dir() / DEMO_FOLDER
    source = demo_clip(str(home / "init.png"), str(home / "edges"), source_frames_dir=str(home / "source"))
    clip_flow = ClipFlow(FlowSettings(), source, (64, 64), torch.device("cpu"))
    assert not clip_flow.from_edges
    pair = clip_flow.pair(4)
    ball = torch.from_numpy((demo_frame(4)[..., 0] > 200) & (demo_frame(4)[..., 1] < 80))
    assert abs(float(pair.backward[0, 0][ball].median()) + 3) < 1.0
    assert pair.valid.mean() > 0.8


def test_without_source_frames_flow_comes_from_edge_maps_and_says_so(tmp_path, caplog):
    init, edges = write_clip(tmp_path / "clip", size=(48, 32), edges=2)
    with caplog.at_level(logging.WARNING, logger=flow_module.__name__):
        clip_flow = ClipFlow(FlowSettings(), FrameFolders(str(init), str(edges)), (48, 32), torch.device("cpu"))
    assert clip_flow.from_edges and "estimated between consecutive edge maps" in caplog.text
    assert clip_flow.pair(2).backward.shape == (1, 2, 32, 48)


def frames_folder(root, count, size=(48, 32)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (i * 20, 40, 90)).save(root / f"{i:05d}.png")
    return root


@pytest.mark.parametrize("count, size, message", [
    (2, (48, 32), "holds 2 frames but the clip has 3"),
    (3, (50, 32), "is 50x32 but frame 0 is 48x32"),
])
def test_source_frames_that_do_not_match_the_clip_are_one_line(tmp_path, count, size, message):
    init, edges = write_clip(tmp_path / "clip", size=(48, 32), edges=2)
    with pytest.raises(QveditError, match=message) as info:
        FrameFolders(str(init), str(edges), source_frames_dir=str(frames_folder(tmp_path / "src", count, size)))
    assert "\n" not in str(info.value)


