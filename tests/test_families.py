"""The model families (qvedit.models.family): what each one's calls take, what it refuses, and Qwen-Image 2.1's own
keys and perf settings on the tiny 2.1 model. The loop itself runs on both families in the loop tests (test_editor,
test_guidance, test_anchor, test_first_frame, test_metrics, test_schedule: parametrised over tiny and tiny_21)."""

from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from qvedit.io.clip_flow import ClipFlow
from qvedit.io.frames import FrameFolders, FrameWriter
from qvedit.models import diffusers_compat as compat
from qvedit.models.diffusers_compat import qwenimage21
from qvedit.models.family import FAMILIES, family_for, family_of
from qvedit.run.clip_editor import edit_clip
from qvedit.run.frame_outputs import ClipOutputs
from qvedit.run.frame_plan import ClipPlan
from qvedit.settings.guidance import FlowSettings, TTLGSettings
from qvedit.settings.model import ModelSettings, PerfSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.schema import register_schemas
from qvedit.settings.start import StartSettings
from tests.conftest import REPO, write_clip
from tests.test_anchor import PipeSpy

register_schemas()
EDIT_PLUS, IMAGE_21 = FAMILIES["qwen_edit_plus"], FAMILIES["qwen_image_21"]


def test_each_family_passes_the_arguments_its_pipeline_takes():
    assert EDIT_PLUS.call_arguments(4096, 4.0, " ") == {"negative_prompt": " ", "true_cfg_scale": 4.0}
    # no negative prompt without true CFG (the pipeline would warn on every call), on both families
    assert EDIT_PLUS.call_arguments(4096, 1.0, " ") == {"negative_prompt": None, "true_cfg_scale": 1.0}
    # 2.1: the condition size is an argument (a side); the negative prompt only where CFG uses it
    assert IMAGE_21.call_arguments(64 * 48, 1.0, " ") == {"output_resolution": 56, "use_kv_cache": True,
                                                          "true_cfg_scale": 1.0}
    configured = family_for(ModelSettings(release="2.1", kv_cache=False, sample_sigmas=[1.0, 0.5]))
    assert configured.call_arguments(1024 * 1024, 4.0, "blurry") == {
        "output_resolution": 1024, "use_kv_cache": False, "true_cfg_scale": 4.0, "negative_prompt": "blurry",
        "sigmas": [1.0, 0.5]}
    assert all(qwenimage21.output_resolution(a) ** 2 >= a for a in (1024, 3000, 64 * 48, 1048576))
    assert family_for(ModelSettings(release="2511")) is EDIT_PLUS  # 2511: 2509's pipeline, nothing else differs


def test_a_clip_on_qwen_image_21_is_planned_in_multiples_of_32_with_one_condition_size():
    plan = ClipPlan.sized(RunSettings(condition_area="output"), (70, 37), 3, IMAGE_21)
    assert plan.generation_size == (64, 32) and plan.family is IMAGE_21
    vision, vae = IMAGE_21.condition_sizes((70, 37), plan.condition_area)
    assert vision == vae == plan.condition_image  # one resize feeds the Qwen3-VL encoder and the VAE
    assert ClipPlan.sized(RunSettings(condition_area="output"), (70, 44), 3).generation_size == (64, 48)  # 2509: 16s
    assert ClipPlan.sized(RunSettings(condition_area="output"), (70, 44), 3, IMAGE_21).generation_size == (64, 32)


def test_a_loaded_21_pipeline_whose_encoder_or_grid_does_not_fit_the_run_is_one_line():
    pipe = SimpleNamespace(processor=SimpleNamespace(image_processor=SimpleNamespace(
        size={"shortest_edge": 65536, "longest_edge": 16777216})), config={"sample_sigmas": None})
    assert IMAGE_21.loaded_problem(pipe, (256, 256), {"num_inference_steps": 40}) is None
    assert IMAGE_21.loaded_problem(pipe, (128, 96), {"num_inference_steps": 40}) == (
        "condition images would be 128x96 = 12288 pixels here, and Qwen-Image 2.1's vision encoder takes 65536 to "
        "16777216 (its image processor resizes others, and they no longer line up with their VAE tokens): set "
        "condition_area to at least 65536")
    pipe.config["sample_sigmas"] = [1.0, 0.9, 0.7, 0.4]  # a distilled checkpoint's fixed grid
    assert IMAGE_21.loaded_problem(pipe, (256, 256), {"num_inference_steps": 4}) is None
    steps = {"num_inference_steps": 4, "first_frame.num_inference_steps": 40}
    assert IMAGE_21.loaded_problem(pipe, (256, 256), steps) == (
        "this model's pipeline fixes its sampling grid at 4 steps (sample_sigmas in its model_index.json), so a call "
        "takes 4 steps, but first_frame.num_inference_steps=40: set first_frame.num_inference_steps=4")


def test_a_fixed_grid_and_the_kv_cache_switch_reach_qwen_image_21s_call(tiny_21_pipe, tmp_path):
    """model.sample_sigmas and model.kv_cache go to the pipeline as sigmas= and use_kv_cache=; the frame has as many
    steps as the grid, guided as a run of that many steps."""
    init, edges = write_clip(tmp_path / "clip", size=(64, 64), edges=1)
    family = family_for(ModelSettings(release="2.1", kv_cache=False, sample_sigmas=[1.0, 0.7, 0.35]))
    settings = RunSettings(prompt="p", num_inference_steps=3, true_cfg_scale=1.0, condition_area="output")
    source = FrameFolders(str(init), str(edges))
    spy = PipeSpy(tiny_21_pipe)
    outputs = ClipOutputs(FrameWriter(tmp_path / "out"))
    edit_clip(spy, source, outputs, settings, TTLGSettings(edge_scale=1, last_steps=None),
              plan=ClipPlan.of(settings, source, family))
    (call,) = spy.calls
    assert (call["sigmas"], call["use_kv_cache"], call["output_resolution"]) == ([1.0, 0.7, 0.35], False, 64)
    assert "negative_prompt" not in call and len(tiny_21_pipe.scheduler.timesteps) == 3
    # a part-way start runs the tail of the grid (strength 0.67 of 3 steps: the last 2), its sigmas= in place of the
    # grid's, from the previous frame warped along the flow (this clip has no source frames: the edge maps' flow)
    flow = ClipFlow(FlowSettings(), source, (64, 64), torch.device("cpu"))
    edit_clip(spy, source, ClipOutputs(FrameWriter(tmp_path / "started")), settings, TTLGSettings(), flow=flow,
              plan=ClipPlan.of(settings, source, family), start=StartSettings(noise="warped", strength=0.67))
    assert spy.calls[1]["sigmas"] == [0.7, 0.35] and len(tiny_21_pipe.scheduler.timesteps) == 2
    assert spy.calls[1]["latents"].shape == (1, 4 * 4, tiny_21_pipe.transformer.config.in_channels)


def test_taylorseer_runs_on_qwen_image_21_with_its_kv_cache(tiny_21_pipe, tmp_path):
    """perf.cache=taylorseer on 2.1: diffusers restarts the Taylor expansion where the KV cache's prefill step returns
    prefix + target tokens; the cached frame differs from the plain one, and taking the cache off gives it back."""
    from qvedit.models.step_cache import use_step_cache

    init, edges = write_clip(tmp_path / "clip", size=(64, 64), edges=1)
    settings = RunSettings(prompt="p", num_inference_steps=8, true_cfg_scale=1.0, condition_area="output")

    def frame(name):
        paths = edit_clip(tiny_21_pipe, FrameFolders(str(init), str(edges)), ClipOutputs(FrameWriter(tmp_path / name)),
                          settings)
        return paths[1].read_bytes()

    plain = frame("plain")
    use_step_cache(tiny_21_pipe.transformer, PerfSettings(cache="taylorseer", cache_start_step=2, cache_interval=3))
    try:
        cached = frame("cached")
    finally:
        use_step_cache(tiny_21_pipe.transformer, PerfSettings())
    assert cached != plain and frame("again") == plain


def test_fp8_keeps_21s_layers_outside_the_blocks_and_its_mlp_down_projections_in_bf16(tiny_21_pipe):
    from qvedit.models.fp8 import fp8_layers

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        keep = compose("config", overrides=["model=qwen_image_21", "perf=fp8"]).perf.fp8_keep_bf16
    split = fp8_layers(tiny_21_pipe.transformer, keep)
    assert {"img_in", "txt_in.in_layer", "txt_in.out_layer", "modulation.1", "norm_out.linear", "proj_out",
            "transformer_blocks.0.img_mlp.out"} <= set(split["bf16"])
    assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.1.img_mlp.gate_layer"} <= set(split["fp8"])


def test_a_wrapped_pipeline_is_known_by_its_transformer(tiny_21_pipe):
    assert family_of(tiny_21_pipe) is family_of(PipeSpy(tiny_21_pipe)) is IMAGE_21
    with pytest.raises(ValueError, match="qvedit runs QwenImageEditPlusPipeline, QwenImage21Pipeline, not Image"):
        family_of(Image.new("RGB", (1, 1)))


def test_a_changed_21_pipeline_is_reported_by_the_adaptations_name(monkeypatch):
    source = qwenimage21.call_source().replace("output_resolution * output_resolution", "side * side")
    monkeypatch.setattr(qwenimage21, "call_source", lambda: source)
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["condition size (2.1)"] and "output_resolution * output_resolution" in broken[
        "condition size (2.1)"]
    assert {a.family for a in compat.ADAPTATIONS} == set(FAMILIES)


def test_2511s_transformer_runs_through_the_loop_and_a_folder_of_the_other_release_is_one_warning(tiny_pipe, tmp_path,
                                                                                                  caplog):
    """Qwen-Image-Edit-2511 is 2509's pipeline with zero_cond_t in its transformer config: the tiny model with that
    flag, given as a local folder with model.release=2511, makes its clip through the same loop (guided), and its
    frames are not 2509's; the same folder with model.release=2509 runs, with one warning naming both releases."""
    from diffusers import QwenImageEditPlusPipeline, QwenImageTransformer2DModel

    from qvedit.run.job import run

    folder = tmp_path / "tiny-2511"
    torch_state = tiny_pipe.transformer.state_dict()
    transformer = QwenImageTransformer2DModel(**{**tiny_pipe.transformer.config, "zero_cond_t": True})
    transformer.load_state_dict(torch_state)
    QwenImageEditPlusPipeline(**{**tiny_pipe.components, "transformer": transformer}).save_pretrained(folder)
    init, edges = write_clip(tmp_path / "clip", edges=1)
    common = ["experiment=tiny_cpu", "metrics=none", "num_inference_steps=2", "ttlg=edge", f"io.init_frame={init}",
              f"io.edge_frames_dir={edges}"]

    def frame(name, *overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=[*common, *overrides])
        return (run(cfg, tmp_path / name).frames_dir / "00001.png").read_bytes()

    plain = frame("2509")
    with caplog.at_level("WARNING", logger="qvedit.models.loading"):
        made = frame("2511", f"model.model_id={folder}", "model.release=2511")
        assert not caplog.records
        assert frame("mislabelled", f"model.model_id={folder}") == made
    assert made != plain
    (record,) = caplog.records
    assert record.getMessage().startswith(f"model.model_id={folder} holds Qwen-Image-Edit-2511's transformer "
                                          "(zero_cond_t True in its transformer/config.json), and model.release=2509")
