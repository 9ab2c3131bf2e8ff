"""The rolling frame loop on the tiny model: counts, frame 0, seeding, sizes, caps, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.io.frames import FrameFolders, FrameWriter
from qvedit.models.diffusers_compat import condition_area
from qvedit.models.loading import load_pipeline
from qvedit.run.clip_editor import edit_clip, frame_seed
from qvedit.run.frame_outputs import ClipOutputs
from qvedit.run.frame_plan import generation_size, output_frame_count, vae_area
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.model import TinyModel
from qvedit.settings.run import RunSettings
from tests.conftest import TINY_MODEL, write_clip


def settings(**overrides) -> RunSettings:
    values = dict(prompt="p", num_inference_steps=2, true_cfg_scale=4.0, seed=0, condition_area="output")
    values.update(overrides)
    return RunSettings(**values)


def run(pipe, init, edges, out, gen=None, ttlg=None, max_frames=None, metrics_path=None):
    outputs = ClipOutputs(FrameWriter(out), metrics_path, FrameMetrics())
    generation = gen or settings()
    generation.max_frames = max_frames
    return edit_clip(pipe, FrameFolders(str(init), str(edges)), outputs, generation, ttlg or TTLGSettings())


def pixels(path):
    return np.asarray(Image.open(path))


def test_writes_t_frames_and_copies_frame_0_exactly(family_pipe, clip, tmp_path):
    init, edges = clip
    paths = run(family_pipe, init, edges, tmp_path / "out", metrics_path=tmp_path / "metrics.csv")
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert np.array_equal(pixels(paths[0]), pixels(init))
    for path in paths[1:]:
        assert Image.open(path).size == (64, 48) and Image.open(path).mode == "RGB"
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "frame,hops,seconds,guided_steps,peak_mem_mib"
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "1"], ["2", "2"], ["3", "3"]]  # a chain: hops = frame


def test_same_seed_same_frames_other_seed_other_frames(family_pipe, clip, tmp_path):
    init, edges = clip
    a = run(family_pipe, init, edges, tmp_path / "a")
    b = run(family_pipe, init, edges, tmp_path / "b")
    c = run(family_pipe, init, edges, tmp_path / "c", gen=settings(seed=1))
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    assert not np.array_equal(pixels(a[2]), pixels(c[2]))


def test_a_frame_can_be_regenerated_alone(tiny_pipe, clip, tmp_path):
    """Frame 2 depends only on (seed, 2), edge 2 and frame 1: remaking it from those gives the same bytes."""
    init, edges = clip
    full = run(tiny_pipe, init, edges, tmp_path / "full")
    alone = tmp_path / "alone"
    (alone / "edges").mkdir(parents=True)
    Image.open(sorted(edges.iterdir())[1]).save(alone / "edges" / "2.png")
    source = FrameFolders(str(full[1]), str(alone / "edges"))
    edge = source.edge_frame(0, (64, 48))
    with condition_area(64 * 48):
        image = tiny_pipe(image=[edge, Image.open(full[1])], prompt="p", negative_prompt=" ", true_cfg_scale=4.0,
                          num_inference_steps=2, height=48, width=64, output_type="np",
                          generator=torch.Generator().manual_seed(frame_seed(0, 2))).images[0]
    assert np.array_equal((image * 255).round().astype(np.uint8), pixels(full[2]))


def test_frames_follow_natural_order(tiny_pipe, tmp_path):
    init, edges = write_clip(tmp_path / "clip", edges=2)
    (edges / "1.png").rename(edges / "10.png")  # now 2.png must come before 10.png
    source = FrameFolders(str(init), str(edges))
    assert [p.name for p in source.edge_paths] == ["2.png", "10.png"]


def test_odd_size_generates_at_multiple_of_16_and_returns_init_size(tiny_pipe, tmp_path):
    init, edges = write_clip(tmp_path / "clip", size=(70, 37), edges=1)
    paths = run(tiny_pipe, init, edges, tmp_path / "out")
    assert Image.open(paths[1]).size == (70, 37)
    assert np.array_equal(pixels(paths[0]), pixels(init))


def test_max_frames_caps_the_clip(tiny_pipe, clip, tmp_path):
    init, edges = clip
    assert len(run(tiny_pipe, init, edges, tmp_path / "two", max_frames=2)) == 2
    assert len(run(tiny_pipe, init, edges, tmp_path / "one", max_frames=1)) == 1


def test_max_frames_beyond_the_edge_frames_is_a_clear_error():  # below 1: check_values (test_bad_inputs.py)
    with pytest.raises(QveditError, match="at most 4"):
        output_frame_count(3, 5)


def test_generation_size():
    assert generation_size(64, 48) == (64, 48)
    assert generation_size(70, 37) == (64, 32)
    assert generation_size(5, 5) == (16, 16)
    w, h = generation_size(2000, 1000, max_area=1024 * 1024)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1024 * 1024 * 1.02 and abs(w / h - 2) < 0.05


def test_frame_seed_depends_on_seed_and_frame():
    seeds = {frame_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    # the same in another process with another hash seed: a frame made again on resume gets the same noise
    other = subprocess.run([sys.executable, "-c", "from qvedit.run.clip_editor import frame_seed; print(frame_seed(7, 3))"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="123"), check=True)
    assert int(other.stdout) == frame_seed(7, 3)


def test_condition_area_is_scoped_to_the_call():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    before = module.VAE_IMAGE_SIZE
    with condition_area(4096):
        assert module.VAE_IMAGE_SIZE == 4096
    assert module.VAE_IMAGE_SIZE == before == 1024 * 1024
    assert vae_area("output", 64, 48) == 64 * 48
    assert vae_area(1048576, 64, 48) == 1048576


def test_condition_area_output_encodes_conditions_at_generation_size(tiny_pipe, tmp_path):
    """The VAE sees condition images at the output size, not diffusers' 1 MP."""
    seen = []
    hook = tiny_pipe.vae.encoder.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    try:
        run(tiny_pipe, *write_clip(tmp_path / "clip", size=(64, 64), edges=1), tmp_path / "out")
    finally:
        hook.remove()
    assert seen and set(seen) == {(64, 64)}


def test_pipeline_is_loaded_once_per_process(tiny_pipe):
    assert load_pipeline(TinyModel(TINY_MODEL), device="cpu", dtype="fp32") is tiny_pipe
    assert not any(p.requires_grad for p in tiny_pipe.transformer.parameters())


def test_inference_mode_is_refused_when_guidance_is_on(tiny_pipe, clip, tmp_path):
    with torch.inference_mode(), pytest.raises(QveditError, match="inference_mode"):
        run(tiny_pipe, *clip, tmp_path / "out", ttlg=TTLGSettings(edge_scale=1.0, vgg_weights="random"))
    assert not (tmp_path / "out" / "00001.png").exists()


def test_a_bad_frame_midway_keeps_the_frames_before(tiny_pipe, clip, tmp_path):
    init, edges = clip
    data = (edges / "2.png").read_bytes()
    (edges / "2.png").write_bytes(data[: len(data) // 2])  # truncated PNG: header fine, pixels missing
    with pytest.raises(QveditError, match="2.png"):
        run(tiny_pipe, init, edges, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["00000.png",
                                                                                                   "00001.png"]


def test_resume_remakes_a_frame_whose_metrics_row_was_lost(family_pipe, clip, tmp_path, caplog):
    init, edges = clip
    whole = run(family_pipe, init, edges, tmp_path / "whole")
    out, metrics = tmp_path / "out", tmp_path / "metrics.csv"
    run(family_pipe, init, edges, out, max_frames=2, metrics_path=metrics)
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # killed after frame 1, before its row
    with caplog.at_level("INFO", logger="qvedit.run.clip_editor"):
        resumed = run(family_pipe, init, edges, out, metrics_path=metrics)
    assert "resuming at frame 1" in caplog.text
    assert [p.read_bytes() for p in resumed] == [p.read_bytes() for p in whole]
    assert [r.split(",")[0] for r in metrics.read_text().splitlines()[1:]] == ["1", "2", "3"]
