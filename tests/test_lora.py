"""model.loras, model.scheduler, perf.fuse_loras and experiment=lightning on the tiny model, with LoRAs
made here at random (peft on the tiny transformer, saved in diffusers' LoRA format)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from qvedit.core.errors import QveditError
from qvedit.models import cache
from qvedit.models.loading import load_pipeline
from qvedit.models.lora import LORA_WEIGHT_NAME, lora_path, mismatch, use_scheduler
from qvedit.run.config_values import frame_settings
from qvedit.run.frame_outputs import MANIFEST, check_or_record
from qvedit.run.job import run
from qvedit.settings.model import LoraSpec, TinyModel
from qvedit.settings.schema import folder_name_excluded_keys, register_schemas
from tests.conftest import REPO, TINY_MODEL, write_clip

register_schemas()
TINY = ["experiment=tiny_cpu", "max_frames=2", "num_inference_steps=2", "metrics=none"]
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "img_mlp.net.2")


def save_lora(folder: Path, transformer: torch.nn.Module, seed: int = 0) -> Path:
    """A random LoRA for ``transformer`` (B not zero, so it changes the output) in diffusers' format."""
    from diffusers import QwenImageEditPlusPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = copy.deepcopy(transformer)
    torch.manual_seed(seed)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=list(TARGETS), init_lora_weights=False),
                            model)
    QwenImageEditPlusPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model))
    return folder / LORA_WEIGHT_NAME


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    """{"good": a LoRA of the tiny transformer, "other_shape": one of a transformer with narrower attention}."""
    from diffusers import QwenImageTransformer2DModel

    root = tmp_path_factory.mktemp("loras")
    transformer = load_pipeline(TinyModel(TINY_MODEL), device="cpu", dtype="fp32").transformer
    other = QwenImageTransformer2DModel(**{**transformer.config, "attention_head_dim": 8})
    return {"good": save_lora(root / "good", transformer), "other_shape": save_lora(root / "other", other)}


def lora_override(file: Path, scale: float = 1.0) -> str:
    return f"model.loras=[{{path:'{file}',scale:{scale}}}]"


def execute(folder: Path, *overrides: str, base=TINY) -> Path:
    """One in-process run on the clip in ``folder``; returns its frames folder."""
    init, edges = write_clip(folder / "clip")
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[*base, f"io.init_frame={init}", f"io.edge_frames_dir={edges}", *overrides])
    return run(cfg, folder / "run").frames_dir


def frames(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[bytes]:
    """The frames of the tiny run without a LoRA."""
    return frames(execute(tmp_path_factory.mktemp("plain")))


def test_scale_0_gives_the_frames_without_lora(loras, plain, tmp_path):
    for fuse in ("true", "false"):
        made = execute(tmp_path / fuse, lora_override(loras["good"], 0.0), f"perf.fuse_loras={fuse}")
        assert frames(made) == plain, f"fuse_loras={fuse}"


def test_scale_1_changes_frames_fused_or_not_and_the_cache_gives_the_plain_model_back(loras, plain, tmp_path):
    fused = frames(execute(tmp_path / "fused", lora_override(loras["good"])))
    layers = frames(execute(tmp_path / "layers", lora_override(loras["good"]), "perf.fuse_loras=false"))
    assert fused[1] != plain[1] and layers[1] != plain[1]
    # fused and as layers compute the same up to rounding: the frames differ by a few 8-bit levels at most
    difference = np.abs(np.asarray(Image.open(tmp_path / "fused/run/frames/00001.png"), np.int16)
                        - np.asarray(Image.open(tmp_path / "layers/run/frames/00001.png"), np.int16))
    assert difference.max() <= 2
    assert frames(execute(tmp_path / "again", "perf.fuse_loras=false")) == plain  # LoRA-free pipeline again


def test_a_lora_made_for_another_transformer_is_one_line_naming_file_and_key(loras, tmp_path):
    with pytest.raises(QveditError) as info:
        execute(tmp_path, lora_override(loras["other_shape"]))
    message = str(info.value)
    assert "\n" not in message and str(loras["other_shape"]) in message
    assert "'transformer.transformer_blocks.0.attn.to_k.lora_A.weight' has shape (4, 24), but " \
           "transformer_blocks.0.attn.to_k takes 48 inputs" in message
    assert not list((tmp_path / "run" / "frames").glob("0000[1-9].png"))


def test_keys_that_do_not_fit_the_transformer_are_named(tiny_pipe):
    modules = dict(tiny_pipe.transformer.named_modules())
    a, b = torch.zeros(4, 48), torch.zeros(48, 4)
    q = "transformer.transformer_blocks.0.attn.to_q"
    assert mismatch({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b}, modules) is None
    assert "names transformer_blocks.0.attn.to_qq, which the transformer does not have" in mismatch(
        {f"{q}q.lora_A.weight": a}, modules)
    assert "is not under transformer." in mismatch({"transformer_blocks.0.attn.to_q.lora_A.weight": a}, modules)
    assert "gives 48 outputs" in mismatch({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": torch.zeros(24, 4)}, modules)
    assert "has rank 8, its other half 4" in mismatch({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight":
                                                       torch.zeros(48, 8)}, modules)
    assert "holds no LoRA weights" in mismatch({}, modules)


def bad_entry(kind: str, t: Path, good: Path) -> str:
    """An override of model.loras that must fail before the model loads."""
    (t / "empty").mkdir()
    if kind == "missing file":
        return lora_override(t / "nope.safetensors")
    if kind == "folder without weights":
        return lora_override(t / "empty")
    if kind == "folder with pickled weights only":
        (t / "empty" / "adapter_model.bin").write_bytes(b"\x80\x04")
        return lora_override(t / "empty")
    if kind == "folder with two files":
        for name in ("a.safetensors", "b.safetensors"):
            (t / "empty" / name).write_bytes(good.read_bytes())
        return lora_override(t / "empty")
    if kind == "not a LoRA":
        save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, t / "model.safetensors")
        return lora_override(t / "model.safetensors")
    if kind == "truncated":
        (t / "cut.safetensors").write_bytes(good.read_bytes()[:-100])
        return lora_override(t / "cut.safetensors")
    if kind == "pickled file":
        (t / "lora.pt").write_bytes(b"\x80\x04")
        return lora_override(t / "lora.pt")
    if kind == "hub LoRA not in the cache, offline":
        return "model.loras=[{path:lightx2v/Qwen-Image-Lightning,weight_name:Qwen-Image-Edit-2509/x.safetensors}]"
    if kind == "NaN scale":
        return lora_override(good, float("nan"))
    if kind == "unknown scheduler key":
        return "+model.scheduler.shfit=3.0"
    raise AssertionError(kind)


BAD = {
    "missing file": r"model.loras\[0\].path: .*nope.safetensors not found",
    "folder without weights": r"model.loras\[0\]: the folder .*empty holds no .safetensors LoRA weights$",
    "folder with pickled weights only": r"holds no .safetensors LoRA weights \(only pickled weights: adapter_model.bin",
    "folder with two files": r"holds 2 .safetensors files \(a.safetensors, b.safetensors\): say which with weight_name",
    "not a LoRA": r"model.safetensors is not a LoRA: none of its 2 tensors is a LoRA weight \(the first: 'bias'\)",
    "truncated": r"cut.safetensors is damaged: cut.safetensors is cut short",
    "pickled file": r"lora.pt is not a .safetensors file",
    "hub LoRA not in the cache, offline": r"the hub LoRA lightx2v/Qwen-Image-Lightning Qwen-Image-Edit-2509/"
                                          r"x.safetensors is not in the Hugging Face cache .*huggingface-cli download",
    "NaN scale": r"model.loras\[0\].scale=nan is not a finite number",
    "unknown scheduler key": r"model.scheduler.shfit is not a FlowMatchEulerDiscreteScheduler setting",
}


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_lora_entry_is_one_line_before_the_model_loads(kind, loras, tmp_path, monkeypatch):
    override = bad_entry(kind, tmp_path, loras["good"])
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(QveditError, match=BAD[kind]) as info:
        execute(tmp_path, override)
    assert "\n" not in str(info.value)


LIGHTNING = ["experiment=lightning", "model=tiny", "device=cpu", "dtype=fp32", "condition_area=output",
             "metrics=none", "max_frames=2"]


def test_experiment_lightning_runs_8_steps_with_its_scheduler_on_the_tiny_model(loras, tmp_path):
    out = execute(tmp_path, lora_override(loras["good"]), "ttlg=edge", base=LIGHTNING)
    (pipe,) = cache.held("pipeline")  # the pipeline the run used, its scheduler as the run left it
    scheduler = pipe.scheduler
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert scheduler.config.base_shift == scheduler.config.max_shift == pytest.approx(math.log(3))
    assert (scheduler.config.shift_terminal, scheduler.config.time_shift_type) == (None, "exponential")
    assert len(scheduler.timesteps) == 8
    plain = np.linspace(1.0, 1 / 8, 8)  # the pipeline's sigmas, shifted with mu = log 3: 3s / (1 + 2s)
    assert np.allclose(scheduler.sigmas.numpy(), [*(3 * plain / (1 + 2 * plain)), 0.0], atol=1e-6)
    assert pd.read_csv(out.parent / "metrics.csv")["guided_steps"].tolist() == [7]  # steps 0..6 of 8
    recorded = OmegaConf.load(out / MANIFEST)
    assert recorded["model.scheduler"]["base_shift"] == pytest.approx(math.log(3))
    assert recorded["model.loras"] == [{"path": str(loras["good"]), "weight_name": None, "scale": 1.0}]
    assert load_pipeline(TinyModel(TINY_MODEL), "cpu", "fp32").scheduler.config.shift_terminal == 0.02  # the model's own


def test_a_job_without_scheduler_values_gets_the_models_own_back(tiny_pipe, tmp_path):
    own = tiny_pipe.scheduler
    lightning = ["+model.scheduler.shift_terminal=null", "+model.scheduler.base_shift=1.0986122886681098",
                 "+model.scheduler.max_shift=1.0986122886681098"]
    plain = frames(execute(tmp_path / "plain"))
    assert frames(execute(tmp_path / "lightning", *lightning))[1] != plain[1]
    assert cache.held("pipeline") == [tiny_pipe] and tiny_pipe.scheduler is not own
    assert frames(execute(tmp_path / "again")) == plain
    assert tiny_pipe.scheduler is own
    use_scheduler(tiny_pipe, {"shift_terminal": None})
    assert tiny_pipe.scheduler.config.shift_terminal is None and own.config.shift_terminal == 0.02


def make(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "ttlg").glob("*.yaml")))
@pytest.mark.parametrize("experiment, steps", [("lightning", 8), ("lightning_4step", 4)])
def test_lightning_composes_with_every_ttlg_preset(experiment, steps, preset):
    from qvedit.core.config_trust import build

    cfg = make([f"experiment={experiment}", f"ttlg={preset}"])
    ttlg = build(cfg.ttlg)
    assert (cfg.num_inference_steps, cfg.true_cfg_scale) == (steps, 1.0)
    lora = cfg.model.loras[0]
    assert f"{steps}steps" in lora.weight_name and lora.path == "lightx2v/Qwen-Image-Lightning"
    assert ttlg.enabled == (preset != "off")
    assert [ttlg.guides_step(i, steps) for i in range(steps)] == [ttlg.enabled] * (steps - 1) + [False]


def test_lightning_with_cfg_parallelism_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(QveditError, match=r"parallel.cfg_degree=2 shares the two passes of true CFG, but "
                                          r"true_cfg_scale=1.0 runs one"):
        execute(tmp_path, "parallel.cfg_degree=2", base=LIGHTNING)


def test_loras_are_frame_settings_left_out_of_folder_names_and_resumed_by_value(tmp_path):
    cfg = make(["model.loras=[{path:/loras/a.safetensors,scale:0.5}]", "+model.scheduler.shift=2.0"])
    settings = frame_settings(cfg)
    assert settings["model.loras"] == [{"path": "/loras/a.safetensors", "weight_name": None, "scale": 0.5}]
    assert settings["model.scheduler"] == {"shift": 2.0}
    assert "model.loras" in folder_name_excluded_keys() and "model.scheduler" not in folder_name_excluded_keys()
    folder = tmp_path / "frames"
    folder.mkdir()
    check_or_record(folder, settings)
    for made in ("00000.png", "00001.png"):  # frames made (frame 0 alone: a run that made none, started afresh)
        (folder / made).write_bytes(b"")
    check_or_record(folder, frame_settings(cfg))  # the same LoRAs: resumes
    with pytest.raises(QveditError, match=r"model.loras: \[.*'scale': 0.5\}\] -> \[.*'scale': 1.0\}\]"):
        check_or_record(folder, frame_settings(make(["model.loras=[{path:/loras/a.safetensors,scale:1.0}]",
                                                     "+model.scheduler.shift=2.0"])))
    # a manifest of a qvedit before these keys: they count as their defaults (no LoRA, the model's scheduler)
    old = {k: v for k, v in frame_settings(make([])).items() if not k.startswith(("model.loras", "model.scheduler"))}
    (folder / MANIFEST).write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    check_or_record(folder, frame_settings(make([])))


def test_folders_and_weight_names(loras, tmp_path):
    good = loras["good"]
    assert lora_path(0, LoraSpec(str(good.parent))) == good  # the diffusers layout: pytorch_lora_weights.safetensors
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "style.safetensors").write_bytes(good.read_bytes())
    assert lora_path(0, LoraSpec(str(tmp_path / "one"))) == tmp_path / "one" / "style.safetensors"
    named = LoraSpec(str(tmp_path), weight_name="one/style.safetensors")
    assert lora_path(0, named) == tmp_path / "one" / "style.safetensors"
    with pytest.raises(QveditError, match="weight_name='x.safetensors' is for a folder or a hub id"):
        lora_path(0, LoraSpec(str(good), weight_name="x.safetensors"))


def test_keys_below_loras_and_scheduler_are_accepted_on_the_command_line():
    from qvedit.cli.override_keys import unknown_overrides

    assert unknown_overrides(["+model.scheduler.shift=2", "model.loras.0.scale=0.5", "perf.fuse_loras=false"]) == []
    assert "did you mean model.loras?" in unknown_overrides(["model.lora=[]"])[0]
    assert unknown_overrides(["model.loras=[{path:a.safetensors,scal:1}]"]) == [
        ("unknown key model.loras[0].scal (model.loras=[{path:a.safetensors,scal:1}]): did you mean scale? an entry "
         "of model.loras takes path, weight_name, scale")]
    assert "did you mean weight_name?" in unknown_overrides(["model.loras.0.wieght_name=x"])[0]


# -- LoRAs on Qwen-Image 2.1, and LoRAs of the other family ---------------------------------------------------------

TARGETS_21 = ("to_q", "to_k", "to_v", "to_out.0", "img_mlp.out")  # 2.1's single-stream blocks
TINY_21 = [*TINY, "model=tiny_21"]


@pytest.fixture(scope="module")
def lora_21(tmp_path_factory, tiny_21_pipe) -> Path:
    """A random LoRA of the tiny 2.1 transformer, saved by QwenImage21Pipeline in diffusers' format."""
    from diffusers import QwenImage21Pipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    folder = tmp_path_factory.mktemp("lora_21")
    model = copy.deepcopy(tiny_21_pipe.transformer)
    torch.manual_seed(0)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=list(TARGETS_21), init_lora_weights=False),
                            model)
    QwenImage21Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model))
    return folder / LORA_WEIGHT_NAME


def test_a_lora_of_qwen_image_21_changes_its_frames_and_scale_0_gives_them_back(lora_21, tmp_path):
    plain = frames(execute(tmp_path / "plain", base=TINY_21))
    assert frames(execute(tmp_path / "one", lora_override(lora_21), base=TINY_21))[1] != plain[1]
    assert frames(execute(tmp_path / "zero", lora_override(lora_21, 0.0), base=TINY_21)) == plain


@pytest.mark.parametrize("model, made_for, fits", [
    ("tiny_21", "good", r"its keys are a Qwen-Image-Edit-Plus \(Qwen-Image-Edit-2509, -2511\) LoRA's \(model="
                        r"qwen_edit_2509 or model=qwen_edit_2511\), and this model is Qwen-Image 2.1$"),
    ("tiny", "lora_21", r"its keys are a Qwen-Image 2.1 LoRA's \(model=qwen_image_21\), and this model is "
                        r"Qwen-Image-Edit-Plus \(Qwen-Image-Edit-2509, -2511\)$"),
])
def test_a_lora_of_the_other_family_is_one_line_naming_both(model, made_for, fits, loras, lora_21, tmp_path):
    file = lora_21 if made_for == "lora_21" else loras[made_for]
    with pytest.raises(QveditError, match=rf"model.loras\[0\] \({file}\) does not fit this model's transformer: .*"
                                          f"{fits}") as info:
        execute(tmp_path, lora_override(file), f"model={model}")
    assert "\n" not in str(info.value) and not list((tmp_path / "run" / "frames").glob("0000[1-9].png"))


def test_a_2509_lora_on_2511_loads_with_one_warning_naming_the_mismatch(loras, tmp_path, caplog):
    from qvedit.models.lora import check_model, release_named
    from qvedit.settings.model import ModelSettings

    named = tmp_path / "Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"
    named.write_bytes(loras["good"].read_bytes())
    assert [release_named(n) for n in (named.name, "lightx2v/Qwen-Image-Edit-2511-Lightning", "style.safetensors")] \
        == ["2509", "2511", None]
    with caplog.at_level("WARNING", logger="qvedit.models.lora"):
        check_model(ModelSettings("Qwen/Qwen-Image-Edit-2511", loras=[LoraSpec(str(named))], release="2511"))
        check_model(ModelSettings("Qwen/Qwen-Image-Edit-2509", loras=[LoraSpec(str(named))]))  # its own model
    (record,) = caplog.records
    assert record.getMessage() == (
        f"model.loras[0] ({named}) was made for Qwen-Image-Edit-2509, and this run's model is Qwen-Image-Edit-2511 "
        "(model.release=2511): it loads (the same transformer) but was trained on the other weights; "
        "Qwen-Image-Edit-2511's own: experiment=lightning")


@pytest.mark.parametrize("experiment, steps", [("lightning", 8), ("lightning_4step", 4)])
def test_lightning_picks_the_lora_distilled_from_the_model(experiment, steps):
    lora = make([f"experiment={experiment}", "model=qwen_edit_2511"]).model.loras[0]
    assert (lora.path, lora.weight_name) == ("lightx2v/Qwen-Image-Edit-2511-Lightning",
                                             f"Qwen-Image-Edit-2511-Lightning-{steps}steps-V1.0-bf16.safetensors")
    lora = make([f"experiment={experiment}"]).model.loras[0]  # 2509, the default model
    assert (lora.path, lora.weight_name) == ("lightx2v/Qwen-Image-Lightning", f"Qwen-Image-Edit-2509/Qwen-Image-Edit"
                                                                              f"-2509-Lightning-{steps}steps-V1.0-bf16"
                                                                              ".safetensors")


def test_lightning_on_a_model_without_a_lightning_lora_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(QveditError, match=r"^model.loras\[0\] is empty: experiment=lightning loads the Lightning LoRA "
                                          r"distilled from the model, and none is published for Qwen-Image 2.1 "
                                          r"\(model.release=2.1\): drop experiment=lightning, or give a LoRA with "
                                          r"model.loras=\[\{path:...\}\]$"):
        execute(tmp_path, "model=tiny_21", base=LIGHTNING)
