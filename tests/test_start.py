"""How frames start (``start/``): noise warped along the flow stays white Gaussian noise, a part-way start runs the
tail of the pipeline's own schedule from the warped previous frame, every start is made again exactly on resume,
and what cannot run is one line before the model loads."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import cache_dir
from qvedit.guidance.noise_warp import bilinear_warp
from qvedit.guidance.optical_flow import FlowPair
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.demo import DEMO_FOLDER, demo_clip
from qvedit.io.frames import FrameWriter
from qvedit.models.diffusers_compat.start import default_sigmas, schedule_mu, schedule_problem, scheduled_sigmas
from qvedit.models.family import family_of
from qvedit.run.clip_editor import edit_clip
from qvedit.run.frame_outputs import ClipOutputs, check_or_record
from qvedit.run.job import run
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.guidance import FlowSettings, TTLGSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.schema import register_schemas
from qvedit.settings.start import StartSettings
from qvedit.start.noise import FrameNoise
from qvedit.start.starts import FrameStarts, warped_onto
from tests.conftest import REPO, TINY_MODEL

register_schemas()

def demo_source():
    home = cache_dir() / DEMO_FOLDER
    return demo_clip(str(home / "init.png"), str(home / "edges"), source_frames_dir=str(home / "source"))


# -- the noise ---------------------------------------------------------------------------------------------------


def statistics(noise: torch.Tensor) -> tuple[float, float, float]:
    """(mean, deviation, the larger |correlation| of horizontal and vertical neighbours) of (1, C, h, w) noise."""
    z = (noise - noise.mean()) / noise.std()
    across = float((z[..., 1:] * z[..., :-1]).mean())
    down = float((z[..., 1:, :] * z[..., :-1, :]).mean())
    return float(noise.mean()), float(noise.std()), max(abs(across), abs(down))


def panning_pair(size: int, frame: int) -> FlowPair:
    """The flow of a camera panning (0.9, -0.35) pixels a frame while zooming in 1% a frame, with a band the
    flow marks occluded that moves down the frame: some cells leave the frame, some are wanted twice."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    centre = (size - 1) / 2
    backward = torch.stack([-0.01 * (xs - centre) - 0.9, -0.01 * (ys - centre) + 0.35])[None]
    valid = torch.ones(1, 1, size, size)
    top = (frame * 7) % (size - 20)
    valid[..., top:top + 12, :] = 0
    return FlowPair(backward, valid)


def test_warped_noise_stays_white_gaussian_after_30_warps_of_a_panning_clip():
    """The issue's test: per-element mean within 0.02 of 0, deviation within 0.02 of 1, neighbour correlation
    below 0.05, after 30 warps (16 channels of 64x64 latents, 8 pixels a cell: 65,536 values); and the noise
    moves with the scene. Bilinear resampling, which the issue rules out, fails it."""
    noise = FrameNoise("warped", seed=3, grid=(16, 64, 64), factor=8)
    size = 64 * 8
    frames = [noise.noise(1)]
    for index in range(2, 32):
        frames.append(noise.noise(index, panning_pair(size, index)))
    for made in (frames[-1], torch.cat(frames[1:])):  # the 30th warp, and every warped frame together
        mean, deviation, neighbours = statistics(made)
        assert abs(mean) < 0.02 and abs(deviation - 1) < 0.02 and neighbours < 0.05, (mean, deviation, neighbours)
    # consecutive frames share most of their noise, moved: about 0.9 of 8 pixels a frame
    before, after = frames[-2], frames[-1]
    assert float((before * after).mean()) > 0.5
    assert abs(float((frames[0] * frames[-1]).mean())) < 0.05  # 30 frames later, a different field
    blurred = frames[0]
    for _ in range(30):
        blurred = bilinear_warp(blurred, torch.tensor([0.45, -0.2]).view(1, 2, 1, 1).expand(1, 2, 64, 64))
    mean, deviation, neighbours = statistics(blurred)
    assert deviation < 0.9 and neighbours > 0.05  # what a plain resampling does to noise


def test_each_kind_of_noise_is_made_again_exactly_and_none_meets_another():
    grid = (4, 8, 8)
    pair = panning_pair(32, 2)
    made = {kind: FrameNoise(kind, 0, grid, 4) for kind in ("independent", "shared", "warped")}
    again = {kind: FrameNoise(kind, 0, grid, 4) for kind in made}
    for kind in made:
        first = [made[kind].noise(1), made[kind].noise(2, pair)]
        assert all(torch.equal(a, b) for a, b in zip(first, [again[kind].noise(1), again[kind].noise(2, pair)]))
    independent, shared = FrameNoise("independent", 0, grid, 4), FrameNoise("shared", 0, grid, 4)
    assert not torch.equal(independent.noise(1), independent.noise(2))
    assert torch.equal(shared.noise(1), shared.noise(5))
    warped = FrameNoise("warped", 0, grid, 4)
    values = [independent.noise(1), shared.noise(1), warped.noise(1), FrameNoise("warped", 1, grid, 4).noise(1)]
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
    with pytest.raises(ValueError, match="without the flow of the frames between"):
        warped.noise(3, pair)
    # a frame asked for out of order (a resumed run's first, another segment's) is carried again from its chain's
    # start: the same noise as frame after frame
    pairs = {index: panning_pair(32, index) for index in range(2, 6)}
    in_order = FrameNoise("warped", 0, grid, 4)
    sequence = [in_order.noise(1)] + [in_order.noise(index, pairs[index]) for index in range(2, 6)]
    again = FrameNoise("warped", 0, grid, 4)
    assert torch.equal(again.noise(5, None, 1, pairs.get), sequence[4])
    assert torch.equal(again.noise(3, None, 1, pairs.get), sequence[2])
    restarted = FrameNoise("warped", 0, grid, 4)  # a chain that starts at frame 3 (a keyframe): fresh there
    assert not torch.equal(restarted.noise(3, None, 3), sequence[2])
    assert torch.equal(restarted.noise(4, pairs[4], 3), FrameNoise("warped", 0, grid, 4).noise(4, None, 3, pairs.get))


# what each family's pipeline draws for a 64x48 frame, (C, h, w) before packing: 2509's packs 2x2 cells of a quarter
# of the transformer's channels into a token (the tiny model: 4 pixels a cell); 2.1's takes every channel of one
# 16x16-pixel cell a token, h and w even (48 -> 2)
GRID_64x48 = {"tiny": lambda pipe: (pipe.transformer.config.in_channels // 4, 12, 16),
              "tiny_21": lambda pipe: (pipe.transformer.config.in_channels, 2, 4)}
TOKENS_64x64 = {"tiny": 8 * 8, "tiny_21": 4 * 4}  # the packed latents' length, from which the pipeline's mu comes


def model_of(pipe) -> str:
    return "tiny_21" if family_of(pipe).name == "qwen_image_21" else "tiny"


def test_independent_noise_is_the_pipelines_own_and_packs_as_it_packs(family_pipe):
    """The noise start.noise=independent makes, packed by the family, is the noise the pipeline draws itself (CPU,
    fp32), on each family."""
    family = family_of(family_pipe)
    channels, height, width = family.latent_grid(family_pipe, 64, 48)
    assert (channels, height, width) == GRID_64x48[model_of(family_pipe)](family_pipe)
    from qvedit.start.noise import frame_seed

    generator = torch.Generator().manual_seed(frame_seed(0, 3))
    own, _ = family_pipe.prepare_latents(None, 1, channels, 48, 64, torch.float32, "cpu", generator)
    noise = FrameNoise("independent", 0, (channels, height, width), family_pipe.vae_scale_factor).noise(3)
    assert torch.equal(family.pack_latents(family_pipe, noise), own)


def test_shared_noise_gives_every_frame_the_same_start_shaped_as_the_pipelines_own(family_pipe):
    starts = FrameStarts(StartSettings(noise="shared"), family_pipe, 0, 8, (64, 64))  # no flow: none needed
    image = demo_source().init_image()
    first, later = starts.frame(1, image), starts.frame(4, image)
    assert first.steps == later.steps == 8 and set(first.kwargs) == {"latents"}
    assert torch.equal(first.kwargs["latents"], later.kwargs["latents"])
    channels = family_of(family_pipe).latent_grid(family_pipe, 64, 64)[0]
    own, _ = family_pipe.prepare_latents(None, 1, channels, 64, 64, torch.float32, "cpu", torch.Generator())
    tokens = TOKENS_64x64[model_of(family_pipe)]
    assert first.kwargs["latents"].shape == own.shape == (1, tokens, family_pipe.transformer.config.in_channels)


# -- the schedule ------------------------------------------------------------------------------------------------

QWEN = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9, "shift": 1.0,
        "shift_terminal": 0.02, "use_dynamic_shifting": True, "time_shift_type": "exponential"}
LIGHTNING = {**QWEN, "base_shift": np.log(3), "max_shift": np.log(3), "shift_terminal": None}


@pytest.mark.parametrize("config", [QWEN, LIGHTNING], ids=["qwen", "lightning"])
@pytest.mark.parametrize("steps", [2, 4, 8, 50])
def test_the_tail_of_the_default_sigmas_is_the_tail_of_the_schedule(config, steps):
    mu = schedule_mu(config, 4096)
    full = scheduled_sigmas(config, default_sigmas(steps), mu)
    for kept in range(1, steps + 1):
        assert np.array_equal(scheduled_sigmas(config, default_sigmas(steps)[steps - kept:], mu), full[steps - kept:])


def test_one_step_is_refused_where_the_stretch_divides_0_by_0_and_works_without_it():
    assert "divides 0 by 0" in schedule_problem(QWEN, 1)
    assert "model.scheduler={shift_terminal:null}" in schedule_problem(QWEN, 1)
    assert schedule_problem(QWEN, 2) is None and schedule_problem(LIGHTNING, 1) is None
    assert np.isnan(scheduled_sigmas(QWEN, default_sigmas(1), 0.5)).all()  # what diffusers itself computes


def test_the_smallest_strength_that_works_is_one_step():
    assert StartSettings(strength=0.6).steps_run(50) == 30 and StartSettings(strength=0.29).steps_run(100) == 29
    assert StartSettings(strength=0.6).steps_run(8) == 4 and StartSettings(strength=0.125).steps_run(8) == 1
    problem = StartSettings(strength=0.1).problem(8)
    assert "leaves no denoising step of num_inference_steps=8" in problem and "is 0.125 (one step" in problem
    assert "is 0.3334" in StartSettings(strength=0.2).problem(3)
    assert StartSettings(strength=0.3334).problem(3) is None


# -- the frames ---------------------------------------------------------------------------------------------------

def gen(steps=8, **overrides) -> RunSettings:
    return RunSettings(**{"prompt": "p", "num_inference_steps": steps, "true_cfg_scale": 1.0, "seed": 0,
                          "condition_area": "output", "max_frames": 5, **overrides})


def clip(pipe, out, start, ttlg=None, max_frames=5, metrics=None):
    source = demo_source()
    flow = ClipFlow(FlowSettings(), source, source.init_image().size, torch.device("cpu"))
    outputs = ClipOutputs(FrameWriter(out), metrics, FrameMetrics())
    return edit_clip(pipe, source, outputs, gen(max_frames=max_frames), ttlg or TTLGSettings(), flow=flow,
                     start=start)


def test_a_part_way_start_runs_the_last_steps_from_the_noised_warped_previous_frame(family_pipe, tmp_path,
                                                                                     monkeypatch):
    """strength 0.5 of 8 steps: each call runs the last 4 steps of the 8-step schedule, from latents at the
    schedule's sigma there; the guidance step keys count over the 4 steps run. On each family."""
    tiny_pipe, calls = family_pipe, []
    original = tiny_pipe.__class__.__call__

    def spy(pipe, *args, **kwargs):  # the guidance records the velocity itself: read the schedule the call set
        result = original(pipe, *args, **kwargs)
        calls.append((kwargs, pipe.scheduler.sigmas.clone()))
        return result

    monkeypatch.setattr(tiny_pipe.__class__, "__call__", spy)
    start = StartSettings(noise="warped", strength=0.5)
    clip(tiny_pipe, tmp_path / "out", start, TTLGSettings(edge_scale=1.0, end_step=2, last_steps=None), max_frames=3,
         metrics=tmp_path / "metrics.csv")
    config = tiny_pipe.scheduler.config
    tokens = TOKENS_64x64[model_of(tiny_pipe)]
    mu = schedule_mu(config, tokens)  # 64x64 frames: 2509's tiny 4 pixels a cell, 2x2 cells a token; 2.1 16x16 pixels
    full = scheduled_sigmas(config, default_sigmas(8), mu)
    assert len(calls) == 2
    for kwargs, sigmas in calls:
        assert kwargs["sigmas"] == list(default_sigmas(8)[4:])
        assert np.array_equal(sigmas.numpy()[:-1], full[4:])  # what the scheduler stepped through
        assert kwargs["latents"].shape == (1, tokens, tiny_pipe.transformer.config.in_channels)
    import pandas as pd

    assert pd.read_csv(tmp_path / "metrics.csv")["guided_steps"].tolist() == [2, 2]  # guided steps 0 and 1 of 4


class Encoded(Exception):
    """Stops a pipeline call once it has encoded its condition images (``latents_of_condition``)."""


def latents_of_condition(pipe, image: Image.Image) -> torch.Tensor:
    """The latents the pipeline's own call makes of ``image`` as its one condition image, encoded at 64x64 (the
    frame's size): packed, as ``prepare_latents`` returns them, the call stopped there."""
    family, original = family_of(pipe), type(pipe).prepare_latents
    made = []

    def prepare_latents(self, *args, **kwargs):
        made.append(original(self, *args, **kwargs)[1])
        raise Encoded

    with pytest.MonkeyPatch.context() as patch, family.conditions(64 * 64), pytest.raises(Encoded):
        patch.setattr(type(pipe), "prepare_latents", prepare_latents)
        pipe(image=[image], prompt="p", num_inference_steps=2, height=64, width=64,
             **family.call_arguments(64 * 64, 1.0, " "))
    return made[0]


def test_the_start_of_a_frame_is_the_warped_previous_frame_noised_to_the_starts_sigma(family_pipe):
    """strength 0.6 of 8 steps: the last 4, from the previous frame moved along the flow and encoded as the pipeline
    encodes a condition image (2.1: as RGBA), noised to the sigma the scheduler starts those 4 at. On each family."""
    source, family = demo_source(), family_of(family_pipe)
    flow = ClipFlow(FlowSettings(), source, (64, 64), torch.device("cpu"))
    starts = FrameStarts(StartSettings(noise="shared", strength=0.6), family_pipe, 0, 8, (64, 64), flow)
    previous, pair = source.init_image(), flow.pair(1)
    begin = starts.frame(1, previous, pair)
    assert begin.steps == 4 and begin.kwargs["sigmas"] == list(default_sigmas(8)[4:])
    x0 = family.encode_latents(family_pipe, warped_onto(previous, pair), 64, 64)
    assert torch.equal(family.pack_latents(family_pipe, x0),
                       latents_of_condition(family_pipe, warped_onto(previous, pair)))
    noise = FrameNoise("shared", 0, family.latent_grid(family_pipe, 64, 64), family_pipe.vae_scale_factor).noise(1)
    expected = (1 - starts.sigma) * x0 + starts.sigma * noise
    assert torch.equal(begin.kwargs["latents"], family.pack_latents(family_pipe, expected))
    mu = schedule_mu(family_pipe.scheduler.config, TOKENS_64x64[model_of(family_pipe)])
    assert starts.sigma == float(scheduled_sigmas(family_pipe.scheduler.config, default_sigmas(8), mu)[4])
    # where the flow is occluded the previous frame keeps its own pixels; elsewhere it moves with the flow
    still = FlowPair(torch.full((1, 2, 64, 64), 3.0), torch.zeros(1, 1, 64, 64))
    assert np.array_equal(np.asarray(warped_onto(previous, still)), np.asarray(previous))
    moved = np.asarray(warped_onto(previous, FlowPair(still.backward, torch.ones(1, 1, 64, 64))))
    assert np.array_equal(moved[:-3, :-3], np.asarray(previous)[3:, 3:])


def test_the_default_start_passes_nothing_and_a_start_changes_the_frames(family_pipe, tmp_path):
    """On each family: the default start leaves the pipeline its own noise (the golden frames hold its bytes);
    warped noise changes the frames after the first."""
    source = demo_source()
    starts = FrameStarts(StartSettings(), family_pipe, 0, 8, (64, 64))  # no flow: none needed
    assert starts.frame(1, source.init_image()).kwargs == {} and starts.steps == 8
    fresh = clip(family_pipe, tmp_path / "fresh", StartSettings(), max_frames=3)
    warped = clip(family_pipe, tmp_path / "warped", StartSettings(noise="warped"), max_frames=3)
    assert fresh[0].read_bytes() == warped[0].read_bytes() and fresh[1].read_bytes() != warped[1].read_bytes()


@pytest.mark.parametrize("model, start", [("tiny", StartSettings(noise="warped")),
                                          ("tiny", StartSettings(noise="warped", strength=0.6)),
                                          ("tiny_21", StartSettings(noise="warped", strength=0.6))],
                         ids=["warped", "warped_previous", "warped_previous-tiny_21"])
def test_a_resumed_clip_remakes_the_warped_noise_and_equals_an_uninterrupted_one(request, tmp_path, model, start):
    pipe = request.getfixturevalue("tiny_pipe" if model == "tiny" else "tiny_21_pipe")
    whole = clip(pipe, tmp_path / "whole", start)
    clip(pipe, tmp_path / "resumed", start, max_frames=3)
    resumed = clip(pipe, tmp_path / "resumed", start)  # frames 3 and 4: noise of 1, 2 warped again
    assert [p.read_bytes() for p in whole] == [p.read_bytes() for p in resumed]


def test_a_start_without_flow_is_refused(tiny_pipe):
    with pytest.raises(QveditError, match="start.noise=warped start.strength=1 needs the clip's optical flow"):
        FrameStarts(StartSettings(noise="warped"), tiny_pipe, 0, 8, (64, 64))


# -- bad input: one line before the model loads ----------------------------------------------------------------

TINY = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=8", "condition_area=output", "metrics=none",
        "io=demo", "max_frames=2"]


def refused(tmp_path, monkeypatch, *overrides) -> str:
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[*TINY, f"model.model_id={TINY_MODEL}", *overrides])
    with pytest.raises(QveditError) as info:
        run(cfg, tmp_path / "run")
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["start.strength=0"], "start.strength=0.0 leaves no denoising step of num_inference_steps=8 (a frame runs the "
                           "last floor(strength x steps) of them): the smallest strength that works here is 0.125"),
    (["start.strength=0.1"], "the smallest strength that works here is 0.125"),
    (["start.strength=nan"], "start.strength=nan is not a finite number: use a number from 0 to 1"),
    (["start.strength=1.5"], "start.strength=1.5 is out of range: use a number from 0 to 1"),
    (["start.noise=flowing"], "start.noise='flowing' is not valid: use independent, shared or warped"),
    (["num_inference_steps=1"], "num_inference_steps=1 cannot run with this model's scheduler: it stretches its "
                                "sigmas so that the last step starts at shift_terminal=0.02"),
    (["start=warped_previous", "schedule=segments", "schedule.keyframe_every=2"],
     "start.noise=warped start.strength=0.6 ties each frame to the one before along one chain, and "
     "schedule=segments makes the clip in separate segments: use schedule=chain with this start, or start=fresh "
     "with schedule=segments"),
], ids=["zero", "too low", "nan", "above 1", "unknown noise", "one step", "segments"])
def test_a_start_that_cannot_run_is_one_line_before_the_model_loads(tiny_pipe, tmp_path, monkeypatch, overrides,
                                                                    message):
    """(tiny_pipe: the tiny model's folder is there, whose scheduler config is read before it loads)"""
    assert message in refused(tmp_path, monkeypatch, *overrides)


@pytest.mark.parametrize("start", ["start=warped", "start=warped_previous"])
def test_a_start_without_obtainable_flow_names_what_gives_one(tmp_path, monkeypatch, start):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # OpenCV missing: flow=dis cannot run
    message = refused(tmp_path, monkeypatch, start)
    assert "follows the clip's optical flow: flow=dis needs OpenCV: pip install opencv-python-headless" in message


def test_a_changed_start_key_on_resume_is_refused_by_name(tmp_path):
    from qvedit.run.config_values import frame_settings

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        fresh, warped = (frame_settings(compose("config", overrides=[*TINY, f"start={preset}"]))
                         for preset in ("fresh", "warped_previous"))
    assert {"start.noise", "start.strength"} <= set(fresh)
    check_or_record(tmp_path, fresh)
    for name in ("00000.png", "00001.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    with pytest.raises(QveditError, match=r"start.noise: 'independent' -> 'warped'; start.strength: 1.0 -> 0.6"):
        check_or_record(tmp_path, warped)


def test_a_nan_frame_names_the_hints_that_fit_the_run():
    from qvedit.run.pipeline_call import checked_frame

    nan = torch.full((3, 4, 4), float("nan"))
    for dtype, guided, hint in [("fp32", False, "neither fp16 nor guidance is on: try another num_inference_steps"),
                                ("fp16", False, "try dtype=fp32 or bf16 instead of fp16"),
                                ("fp32", True, "try a lower ttlg.lr or lower loss scales")]:
        with pytest.raises(QveditError) as info:
            checked_frame(nan, 2, dtype, guided)
        assert hint.rstrip("(") in str(info.value) and (dtype != "fp32" or "instead of fp16" not in str(info.value))


def test_a_photo_clip_pans_and_zooms_across_a_real_photograph(tmp_path):
    from qvedit.core.images import to_tensor
    from qvedit.guidance.optical_flow import DISFlow
    from qvedit.io.photo_clip import photo_frames, write_photo_clip

    folder = write_photo_clip(tmp_path / "clip", "chelsea", 4, (48, 32))
    frames = sorted(folder.glob("*.png"))
    assert [p.name for p in frames] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert Image.open(frames[0]).size == (48, 32) and write_photo_clip(folder, "chelsea", 4, (48, 32)) == folder
    first, second = photo_frames("astronaut", 2, (64, 64), pan=(3.0, 0.0), zoom=0.0)
    flow = DISFlow()(to_tensor(second), to_tensor(first))  # second(x) ~ first(x + flow): the view moved right 3 px
    assert abs(float(flow[0, 0, 16:48, 16:48].median()) - 3.0) < 0.5
    with pytest.raises(QveditError, match="no sample photograph 'moon'"):
        photo_frames("moon", 2)
