"""Per-frame metrics: known values on known images, column sets, and no effect on the frames."""

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import to_tensor as pil_to_tensor
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.frames import FrameFolders, FrameWriter
from qvedit.models import cache
from qvedit.run.clip_editor import edit_clip
from qvedit.run.frame_outputs import ClipOutputs
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.guidance import FlowSettings, TTLGSettings
from qvedit.settings.report import MetricsSettings
from qvedit.settings.run import RunSettings


def scene(seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    image = np.zeros((size[1], size[0], 3), np.uint8) + 40
    x, y = rng.integers(5, 20, 2)
    image[y:y + 15, x:x + 20] = rng.integers(100, 255, 3)
    return Image.fromarray(image)


def own_edges(image):
    return Image.fromarray(edges_to_uint8(sobel_edges(pil_to_tensor(image))[0, 0])).convert("RGB")


@pytest.fixture
def metrics():
    return FrameMetrics(MetricsSettings(vgg_weights="random"))


def test_known_values(metrics):
    init, frame = scene(0), scene(1)
    metrics.start(init)
    same = metrics.score(init, own_edges(init), init)
    assert same["edge_loss"] < 1 / 255 and same["gram_loss"] == 0
    assert same["lpips_to_init"] == 0 and same["lpips_to_prev"] == 0
    other = metrics.score(frame, own_edges(init), init)
    assert other["edge_loss"] > 0.01 and other["gram_loss"] > 0 and other["lpips_to_init"] > 0.01
    assert other["lpips_to_prev"] == other["lpips_to_init"]  # previous frame is the init here


def test_columns(metrics):
    assert metrics.columns == ["frame", "hops", "edge_loss", "gram_loss", "warp_error", "color_drift",
                               "edge_offset_px", "lpips_to_init", "lpips_to_prev", "seconds", "guided_steps",
                               "peak_mem_mib"]
    assert FrameMetrics(MetricsSettings(quality=False)).columns == ["frame", "hops", "seconds", "guided_steps",
                                                                    "peak_mem_mib"]


def forget(kind: str, monkeypatch) -> None:
    """For this test, the process holds no model of ``kind`` (those it holds come back after)."""
    monkeypatch.setattr(cache, "_held", {key: model for key, model in cache._held.items() if key[0] != kind})


def test_without_lpips_the_lpips_columns_are_skipped_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    forget("lpips", monkeypatch)
    with caplog.at_level(logging.WARNING):
        first = FrameMetrics(MetricsSettings(vgg_weights="random"))
        FrameMetrics(MetricsSettings(vgg_weights="random"))
    assert "lpips_to_init" not in first.columns and "edge_loss" in first.columns
    assert sum("lpips is not installed" in r.message for r in caplog.records) == 1


def test_lpips_offline_without_vgg_weights_says_where_they_go(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    forget("lpips", monkeypatch)

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(QveditError, match="vgg16-397923af.pth") as info:
        FrameMetrics(MetricsSettings(vgg_weights="imagenet"))
    assert "metrics=none" in str(info.value) or "vgg_weights=random" in str(info.value)


def test_metrics_never_change_the_frames(family_pipe, clip, tmp_path):
    init, edges = clip
    settings = RunSettings(prompt="p", num_inference_steps=2, condition_area="output")
    outputs = []
    for name, metrics in (("plain", None), ("measured", FrameMetrics(MetricsSettings(vgg_weights="random")))):
        clip_outputs = ClipOutputs(FrameWriter(tmp_path / name), tmp_path / f"{name}.csv", metrics)
        source = FrameFolders(str(init), str(edges))
        flow = ClipFlow(FlowSettings(), source, (64, 48), torch.device("cpu")) if metrics else None
        outputs.append(edit_clip(family_pipe, source, clip_outputs, settings, TTLGSettings(), flow=flow))
    assert [p.read_bytes() for p in outputs[0]] == [p.read_bytes() for p in outputs[1]]
    header, *rows = (tmp_path / "measured.csv").read_text().splitlines()
    assert header.startswith("frame,hops,edge_loss,gram_loss,warp_error,color_drift,edge_offset_px,lpips_to_init,"
                             "lpips_to_prev,seconds")
    assert len(rows) == 3 and all(len(r.split(",")) == 12 for r in rows)
    assert all(float(r.split(",")[5]) > 0 and r.split(",")[6] != "" for r in rows)  # color_drift, edge_offset_px
    assert all(float(r.split(",")[4]) > 0 for r in rows)  # warp_error against the previous frame
    assert all(float(r.split(",")[-1]) > 0 for r in rows)  # peak memory is measured


def test_small_values_keep_their_significant_digits():
    from qvedit.scoring.frame_metrics import significant

    assert significant(1.2345678e-6) == 1.23457e-06 and significant(3.98765432e-4) == 3.98765e-04
    assert significant(39.2512345) == 39.2512 and significant(0.0) == 0.0


def test_peak_memory_is_each_frames_own_not_the_process_peak_so_far():
    from qvedit.models.devices import peak_memory_mib, reset_peak_memory

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = peak_memory_mib(cpu)
    big = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    during = peak_memory_mib(cpu)
    del big
    reset_peak_memory(cpu)  # the next frame's peak starts from what is in memory now
    after = peak_memory_mib(cpu)
    assert during > before + 150 and after < during - 150, (before, during, after)


class FakeOpenClip:
    """Stands in for open_clip: its 'CLIP' embeds an image as its mean colour (R, G, B)."""

    class Model(torch.nn.Module):
        def encode_image(self, pixels):
            return pixels.mean(dim=(2, 3))

    @staticmethod
    def create_model_and_transforms(name, pretrained):
        return FakeOpenClip.Model(), None, lambda image: pil_to_tensor(image)[0]


def test_clip_consistency_is_the_cosine_of_consecutive_embeddings(monkeypatch):
    from qvedit.scoring import clip_consistency  # noqa: F401

    monkeypatch.setitem(sys.modules, "open_clip", FakeOpenClip)
    forget("clip", monkeypatch)
    metrics = FrameMetrics(MetricsSettings(vgg_weights="random"))
    assert "clip_consistency" in metrics.columns
    red, orange = Image.new("RGB", (16, 16), (200, 0, 0)), Image.new("RGB", (16, 16), (200, 100, 0))
    metrics.start(red)
    row = metrics.score(orange, red, red)
    assert abs(row["clip_consistency"] - 200 / (200 ** 2 + 100 ** 2) ** 0.5) < 1e-5
    assert metrics.score(red, red, red)["clip_consistency"] == 1.0


def test_without_open_clip_the_clip_column_is_skipped_with_one_warning(monkeypatch, caplog):
    from qvedit.scoring import clip_consistency  # noqa: F401

    monkeypatch.setitem(sys.modules, "open_clip", None)
    forget("clip", monkeypatch)
    with caplog.at_level(logging.WARNING):
        first = FrameMetrics(MetricsSettings(vgg_weights="random"))
        FrameMetrics(MetricsSettings(vgg_weights="random"))
    assert "clip_consistency" not in first.columns
    assert sum("open_clip is not installed" in r.message for r in caplog.records) == 1
