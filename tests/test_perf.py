"""perf/ settings and the benchmark entry on the CPU (the GPU figures are measured with the device tool)."""

import json
from pathlib import Path

import pytest

from qvedit.cli.bench import main as bench_main
from qvedit.core.errors import QveditError
from qvedit.models.perf import apply_perf, check_perf
from qvedit.settings.model import PerfSettings


def test_unknown_attention_backend_is_a_clear_error(tiny_pipe):
    with pytest.raises(QveditError, match="perf.attention_backend='no-such-kernel'"):
        apply_perf(tiny_pipe, PerfSettings(attention_backend="no-such-kernel"))


def test_text_encoder_offload_needs_a_gpu(tiny_pipe):
    with pytest.raises(QveditError, match="needs a CUDA device"):
        apply_perf(tiny_pipe, PerfSettings(offload_text_encoder=True))


def test_default_perf_changes_nothing(tiny_pipe):
    apply_perf(tiny_pipe, PerfSettings())
    assert "encode_prompt" not in vars(tiny_pipe)


def test_bench_runs_and_reports_every_column(tmp_path, tiny_pipe, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # without --out it writes a new folder under runs/, as a run does
    assert bench_main(["--model", "tiny", "--device", "cpu", "--sizes", "64", "--steps", "2", "--last-steps", "2",
                       "--variants", "off_cond_output", "edge_gram_cond_output"]) == 0
    (tmp_path,) = [p.parent for p in (tmp_path / "runs" / "bench").glob("*/*/bench.json")]
    said = capsys.readouterr().err  # progress as it goes: each variant when it starts and when it is done
    for line in ("qvedit.bench: 1 of 2: off_cond_output at 64², 2 steps", "qvedit.bench: 2 of 2: edge_gram_cond_output "
                 "at 64² took ", f"qvedit.bench: wrote {Path('runs') / 'bench'}"):
        assert line in said, said
    report = json.loads((tmp_path / "bench.json").read_text())
    off, guided = report["rows"]
    assert (off["variant"], guided["variant"]) == ("off_cond_output", "edge_gram_cond_output")
    assert off["transformer_passes"] == 4  # 2 steps x true CFG
    assert guided["guided_steps"] == 2 and guided["added_s_per_guided_step"] > 0
    assert all(off[k] > 0 for k in ("seconds_per_frame", "prompt_encoding_s", "transformer_s_per_step", "decode_s"))
    assert "| 64² | 2 | edge_gram_cond_output |" in (tmp_path / "bench.md").read_text()


def test_bench_explains_every_option_and_warns_as_the_main_command_does():
    from qvedit.cli.bench import build_parser, cpu_warnings

    assert all(action.help for action in build_parser()._actions)
    (warning,) = cpu_warnings("tiny", "cpu", [64], ["off", "off_cond_output"])
    assert "condition_area=1048576" in warning and "pass condition_area=output" in warning
    assert len(cpu_warnings("random_full", "cpu", [64], ["off_cond_output"])) == 1  # the full model on the CPU
    assert cpu_warnings("random_full", "cuda", [1024], ["off"]) == []


def test_a_warm_up_frame_leaves_a_part_way_start_a_step_to_run():
    """The warm-up frame (2 steps) of a variant that starts at strength 0.4 would run no step and be refused."""
    from qvedit.cli.bench import warm_up_steps

    assert [warm_up_steps(v) for v in ("off", "edge_gram_s06", "q21_off_s04", "lightning_edge_gram_s04")] == [2, 2, 3, 3]


# -- perf.quantize=fp8 and perf=vram24 on the CPU (the GPU side: benchmarks/perf_presets.py) ---------

import copy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qvedit.models import fp8# noqa: E402
from qvedit.settings.model import FP8_KEEP_BF16# noqa: E402
from tests.conftest import REPO, SAFETY_TIMEOUT_S, TINY_MODEL, run_qvedit  # noqa: E402

# the tiny transformer (2 blocks): which Linear layers get FP8 matmuls under the default keep list
TINY_FP8 = {f"transformer_blocks.{b}.{layer}" for b in (0, 1) for layer in (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
    "attn.to_add_out", "img_mlp.net.0.proj", "txt_mlp.net.0.proj", "txt_mlp.net.2")}
TINY_BF16 = {"time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2", "img_in",
             "txt_in", "norm_out.linear", "proj_out"} | {f"transformer_blocks.{b}.{layer}" for b in (0, 1)
                                                           for layer in ("img_mod.1", "txt_mod.1", "img_mlp.net.2")}


def test_fp8_layer_selection_on_the_tiny_transformer(tiny_pipe):
    split = fp8.fp8_layers(tiny_pipe.transformer)
    assert set(split["fp8"]) == TINY_FP8 and set(split["bf16"]) == TINY_BF16


def test_fp8_layer_selection_on_the_full_architecture():
    """The 2509 transformer built on the meta device (no memory): 11 of each block's 14 Linear layers in
    fp8; the modulation layers and the image MLP's down projection, the embedders and the output in bf16."""
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel()
    split = fp8.fp8_layers(transformer)
    assert len(split["fp8"]) == 60 * 11 and len(split["bf16"]) == 60 * 3 + 6
    params = {name: module.weight.numel() for name, module in transformer.named_modules()
              if isinstance(module, torch.nn.Linear)}
    share = sum(params[n] for n in split["fp8"]) / sum(params.values())
    assert 0.5 < share < 0.6  # the modulation layers are a third of the weights, net.2 a ninth


def test_keep_patterns_are_globs_over_module_names():
    assert fp8.keeps_bf16("transformer_blocks.7.img_mlp.net.2")
    assert not fp8.keeps_bf16("transformer_blocks.7.img_mlp.net.0.proj")
    assert not fp8.keeps_bf16("transformer_blocks.7.txt_mlp.net.2")
    assert fp8.keeps_bf16("proj_out") and not fp8.keeps_bf16("transformer_blocks.0.attn.to_out.0")
    first_and_last = [*FP8_KEEP_BF16, "transformer_blocks.0.*", "transformer_blocks.59.*"]
    assert fp8.keeps_bf16("transformer_blocks.59.attn.to_q", first_and_last)
    assert not fp8.keeps_bf16("transformer_blocks.5.attn.to_q", first_and_last)
    odd = torch.nn.Linear(24, 48)  # torch._scaled_mm takes sides that are multiples of 16
    assert not fp8.fp8_layer_filter("transformer_blocks.0.attn.to_q", odd)
    assert not fp8.fp8_layer_filter("transformer_blocks.0.attn.norm_q", torch.nn.LayerNorm(16))


def test_torchaos_quantize_gets_the_row_scaled_config_and_the_filter(tiny_pipe, monkeypatch):
    torchao_quantization = pytest.importorskip("torchao.quantization")
    calls = []
    monkeypatch.setattr(torchao_quantization, "quantize_", lambda model, config, filter_fn, device: calls.append(
        (model, config, filter_fn, device)))
    transformer = copy.deepcopy(tiny_pipe.transformer)
    down_projections = {"transformer_blocks.0.img_mlp.net.2", "transformer_blocks.1.img_mlp.net.2"}
    assert set(fp8.quantize_fp8(transformer, ["*.img_mlp.net.2"], "cpu")) == TINY_FP8 | TINY_BF16 - down_projections
    ((model, config, filter_fn, device),) = calls
    assert model is transformer and device == "cpu"
    assert type(config).__name__ == "Float8DynamicActivationFloat8WeightConfig"
    assert all(type(g).__name__ == "PerRow" for g in config.granularity)
    chosen = {name for name, module in transformer.named_modules() if filter_fn(module, name)}
    assert chosen == set(fp8.fp8_layers(transformer, ["*.img_mlp.net.2"])["fp8"])


def test_fp8_weights_where_the_filter_says(tiny_pipe, monkeypatch):
    """torchao refuses float8 without FP8 hardware; with that check lifted it converts the weights on
    the CPU too, which shows the filter reaching torchao (nothing is run)."""
    quant_api = pytest.importorskip("torchao.quantization.quant_api")
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    transformer = copy.deepcopy(tiny_pipe.transformer).to(torch.bfloat16)
    fp8.quantize_fp8(transformer, FP8_KEEP_BF16, "cpu")
    kinds = {name: type(module.weight).__name__ for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear)}
    assert {name for name, kind in kinds.items() if kind == "Float8Tensor"} == TINY_FP8
    assert {name for name, kind in kinds.items() if kind == "Parameter"} == TINY_BF16


@pytest.mark.parametrize("settings, message", [
    (dict(quantize="fp8"), r"perf.quantize=fp8 needs a CUDA GPU with FP8 tensor cores .*device=cpu"),
    (dict(group_offload=True), r"perf.group_offload streams .* device=cpu .* use perf=default"),
    (dict(group_offload=True, compile=True), "perf.compile does not combine with perf.group_offload"),
    (dict(group_offload=True, offload_text_encoder=True), "already keeps the text encoder in CPU memory"),
    (dict(quantize="fp8", group_offload=True), "perf.quantize=fp8 does not combine with perf.group_offload"),
    (dict(quantize="fp8", offload_text_encoder=True), "does not combine with perf.offload_text_encoder"),
    (dict(quantize="fp8", layerwise_fp8_storage=True), "leave perf.layerwise_fp8_storage=false"),
    (dict(layerwise_fp8_storage=True, compile=True), "perf.compile does not combine with perf.layerwise_fp8_storage"),
])
def test_perf_settings_that_cannot_work_are_refused_in_one_line(settings, message):
    with pytest.raises(QveditError, match=message) as info:
        check_perf(PerfSettings(**settings), "cpu", "bf16")
    assert "\n" not in str(info.value)


def test_fp8_needs_ada_or_newer_bf16_and_torchao(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(QveditError, match=r"A100-SXM4-80GB on cuda is 8.0: use perf=fast"):
        check_perf(PerfSettings(quantize="fp8"), "cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(QveditError, match="dtype=fp16: pass dtype=bf16"):
        check_perf(PerfSettings(quantize="fp8"), "cuda", "fp16")
    monkeypatch.setitem(__import__("sys").modules, "torchao.quantization", None)  # as if not installed
    with pytest.raises(QveditError, match=r"needs torchao's float8 quantization .*pip install 'qvedit\[fp8\]'"):
        check_perf(PerfSettings(quantize="fp8"), "cuda", "bf16")


def test_group_offload_with_gpu_and_many_processes_is_refused():
    with pytest.raises(QveditError, match=r"does not combine with parallel.\* degrees \(2 processes\)"):
        check_perf(PerfSettings(group_offload=True), "cuda", "bf16", processes=2)


def test_what_changes_the_loaded_pipeline_is_part_of_its_cache_key():
    assert PerfSettings(compile=True, offload_text_encoder=True).pipeline_key() == ()
    assert PerfSettings(compile=True).host_components() == ()
    assert PerfSettings(quantize="fp8", fp8_keep_bf16=["proj_out"]).pipeline_key() == (("quantize", "fp8", "proj_out"),)
    assert PerfSettings(quantize="fp8").host_components() == ("transformer",)
    assert PerfSettings(group_offload=True).host_components() == ("transformer", "text_encoder")
    assert PerfSettings(group_offload=True, layerwise_fp8_storage=True).pipeline_key() == (
        ("layerwise_fp8_storage",), ("group_offload",))


def fresh_tiny_pipe():
    """A second tiny pipeline, outside qvedit's loader cache (the session's shared one stays as it is)."""
    from diffusers import QwenImageEditPlusPipeline

    pipe = QwenImageEditPlusPipeline.from_pretrained(TINY_MODEL, dtype=torch.float32)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    return pipe


def guided_frame(pipe, clip, folder):
    from qvedit.io.frames import FrameFolders, FrameWriter
    from qvedit.run.clip_editor import edit_clip
    from qvedit.run.frame_outputs import ClipOutputs
    from qvedit.settings.guidance import TTLGSettings
    from qvedit.settings.run import RunSettings

    init, edges = clip
    ttlg = TTLGSettings(edge_scale=1.0, gram_scale=0.2, last_steps=2, vgg_weights="random")
    settings = RunSettings(num_inference_steps=2, condition_area="output", max_frames=2)
    pipe.set_progress_bar_config(disable=True)
    frames = edit_clip(pipe, FrameFolders(str(init), str(edges)), ClipOutputs(FrameWriter(folder)), settings, ttlg)
    return np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(frames[-1]))


def test_group_offloading_hooks_give_the_same_guided_frame(tiny_pipe, clip, tmp_path):
    """perf.group_offload's wiring (transformer by blocks, text encoder by layers, VAE resident), run on the
    CPU with synchronous copies: the pipeline finds its device through the hooks and guidance still
    backpropagates through the resident VAE; the frame is the plain pipeline's, byte for byte."""
    from qvedit.models.perf import group_offload

    expected = guided_frame(tiny_pipe, clip, tmp_path / "plain")
    pipe = fresh_tiny_pipe()
    group_offload(pipe, "cpu", use_stream=False)
    assert pipe._execution_device == torch.device("cpu")
    np.testing.assert_array_equal(guided_frame(pipe, clip, tmp_path / "offloaded"), expected)


def test_fp8_storage_rounds_the_weights_and_still_makes_the_frame(tiny_pipe, clip, tmp_path):
    from qvedit.models.perf import prepare_pipeline

    expected = guided_frame(tiny_pipe, clip, tmp_path / "plain")
    pipe = fresh_tiny_pipe()
    prepare_pipeline(pipe, PerfSettings(layerwise_fp8_storage=True), "cpu")
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert pipe.transformer.dtype == torch.float32  # what the pipeline computes in
    frame = guided_frame(pipe, clip, tmp_path / "fp8_storage")
    assert frame.shape == expected.shape and not np.array_equal(frame, expected)


def test_fp8_on_the_cpu_is_one_line_before_the_model_loads(tmp_path, clip):
    init, edges = clip
    result = run_qvedit("model=tiny", "device=cpu", "perf=fp8", "metrics=none", f"io.init_frame={init}",
                        f"io.edge_frames_dir={edges}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert len(errors) == 1 and "perf.quantize=fp8 needs a CUDA GPU" in errors[0], result.stderr[-2000:]
    assert " on cpu (" not in result.stderr  # the loader's "loading <model> on cpu (bf16)" never came
    assert not (tmp_path / "run").exists()


def test_a_run_without_fp8_never_imports_torchao(tmp_path, clip):
    """torchao (installed with the fp8 and test extras) warns on import: only perf.quantize=fp8 imports it."""
    init, edges = clip
    code = ("import runpy, sys\n"
            "try:\n    runpy.run_module('qvedit', run_name='__main__')\nexcept SystemExit as stop:\n"
            "    assert not stop.code, stop.code\n"
            "print('torchao imported:', sys.modules.get('torchao') is not None)")
    result = subprocess.run([sys.executable, "-c", code, "experiment=tiny_cpu", "metrics=none", "max_frames=2",
                             "num_inference_steps=2", f"io.init_frame={init}", f"io.edge_frames_dir={edges}",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torchao imported: False" in result.stdout
    assert "torchao" not in result.stderr  # none of its import warnings


def test_bench_refuses_a_preset_the_device_cannot_run_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    assert bench_main(["--model", "tiny", "--device", "cpu", "--variants", "off", "off_vram24",
                       "--out", str(tmp_path)]) == 2
    assert "qvedit: error: perf.group_offload streams" in capsys.readouterr().err


def test_pinned_chunks_hold_the_full_model_with_little_waste():
    """diffusers' per-tensor pinning rounds each tensor up to a power of two (60 GiB for the 38 GiB
    transformer); 512 MiB chunks hold the bf16 transformer in 39 GiB and the text encoder in 16."""
    from diffusers import QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from qvedit.models.perf import ALIGN, chunk_plan
    from qvedit.models.random_full import created_as, qwen2_5_vl_7b_config

    with created_as("meta", torch.bfloat16):
        models = {"transformer": QwenImageTransformer2DModel(),
                  "text_encoder": Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_7b_config())}
    for name, limit in (("transformer", 39), ("text_encoder", 16)):
        sizes = [t.numel() * t.element_size() for t in [*models[name].parameters(), *models[name].buffers()]]
        places, chunks = chunk_plan(sizes)
        assert sum(chunks) <= limit * 2**30, name
        spans = sorted((c, offset, offset + size) for (c, offset), size in zip(places, sizes))
        assert all(a[2] <= b[1] for a, b in zip(spans, spans[1:]) if a[0] == b[0])  # no overlap
        assert all(offset % ALIGN == 0 and end <= chunks[c] for c, offset, end in spans)


def test_pinning_in_place_makes_views_of_chunks_and_keeps_the_frame(tiny_pipe, clip, tmp_path):
    from qvedit.models.perf import pin_in_place

    expected = guided_frame(tiny_pipe, clip, tmp_path / "plain")
    pipe = fresh_tiny_pipe()
    chunks = []
    pinned = pin_in_place(pipe.transformer, allocate=lambda n: chunks.append(torch.empty(n, dtype=torch.uint8))
                          or chunks[-1])  # pageable here: pinning needs CUDA
    assert pinned == sum(c.numel() for c in chunks) and len(chunks) == 1
    base = chunks[0].data_ptr()
    assert all(base <= t.data_ptr() < base + pinned for t in pipe.transformer.parameters())
    np.testing.assert_array_equal(guided_frame(pipe, clip, tmp_path / "pinned"), expected)


@pytest.mark.long
def test_the_preset_benchmark_runs_on_the_cpu_and_records_what_it_refuses(tmp_path):
    """benchmarks/perf_presets.py (the GPU check of perf=fp8 and perf=vram24) as a dry run on the CPU: the
    default preset's frames and their noise floor, and a row per refused preset instead of a crash."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "presets.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "perf_presets.py"), "--device", "cpu",
                             "--models", "tiny", "--size", "64", "--steps", "2", "--last-steps", "2",
                             "--condition-area-output", "--out", str(out)], capture_output=True, text=True, timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {(r["preset"], r["ttlg"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("default", "off"), ("default", "edge_gram"), ("default", "edge_gram (again)"),
                         ("fp8", "off"), ("fp8", "edge_gram"), ("vram24", "off"), ("vram24", "edge_gram")}
    assert rows[("default", "edge_gram (again)")]["levels_max"] == 0  # the CPU is deterministic
    assert "levels_max" not in rows[("default", "off")]  # the reference itself
    assert rows[("fp8", "off")]["error"].startswith("refused: perf.quantize=fp8 needs a CUDA GPU")
    assert rows[("vram24", "off")]["error"].startswith("refused: perf.group_offload streams")
    assert "| tiny | default | edge_gram (again) |" in out.with_suffix(".md").read_text()


def test_a_clip_started_in_bf16_is_not_finished_in_fp8(tmp_path):
    """perf.quantize and its keep list change the frames, so they are in the resume manifest; a manifest
    from before they existed counts them as their defaults; compile or offloading may change."""
    import yaml
    from hydra import compose, initialize_config_dir

    from qvedit.run.config_values import frame_settings
    from qvedit.run.frame_outputs import check_or_record
    from qvedit.settings.schema import register_schemas
    from tests.conftest import REPO

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        base, fast, vram24, fp8_run, fewer_kept = (compose("config", overrides=o) for o in (
            [], ["perf=fast"], ["perf=vram24"], ["perf=fp8"], ["perf.fp8_keep_bf16=[proj_out]"]))
    for made in ("00000.png", "00001.png"):  # frames made (frame 0 alone: a run that made none, started afresh)
        (tmp_path / made).write_bytes(b"")
    before = {k: v for k, v in frame_settings(base).items() if not k.startswith("perf.")}
    (tmp_path / ".qvedit-run.yaml").write_text(yaml.safe_dump(before, allow_unicode=True))
    for same in (base, fast, vram24):
        check_or_record(tmp_path, frame_settings(same))
    with pytest.raises(QveditError, match=r"perf.quantize: 'none' -> 'fp8'"):
        check_or_record(tmp_path, frame_settings(fp8_run))
    with pytest.raises(QveditError, match=r"perf.fp8_keep_bf16: \[.*\] -> \['proj_out'\]"):
        check_or_record(tmp_path, frame_settings(fewer_kept))
