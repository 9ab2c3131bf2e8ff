"""Every config in conf/ composes against the schema and instantiates; typos fail at compose time."""

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from qvedit.core.config_trust import build as instantiate
from qvedit.core.errors import QveditError
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource, open_source
from qvedit.models.family import family_for, pipeline_class_problem, read_index
from qvedit.models.loading import load_pipeline
from qvedit.run.config_values import check_values
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.field_tags import tags_of
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.model import TinyModel, ToyModel
from qvedit.settings.report import MetricsSettings
from qvedit.settings.schema import register_schemas, schema_fields
from tests.conftest import REPO

CONF = REPO / "conf"
register_schemas()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make(overrides=()):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def test_defaults_mirror_the_spec():
    cfg = make()
    assert cfg.model.model_id == "Qwen/Qwen-Image-Edit-2509"
    assert (cfg.num_inference_steps, cfg.true_cfg_scale, cfg.seed) == (50, 4.0, 0)
    assert (cfg.device, cfg.dtype, cfg.negative_prompt, cfg.condition_area) == ("cuda", "bf16", " ", 1048576)
    assert cfg.prompt.startswith("将图 2 按图 1")
    assert cfg.ttlg.lr == 0.05 and cfg.ttlg.every == 1 and cfg.ttlg.edge_scale == 0


@pytest.mark.parametrize("name", options("ttlg"))
def test_every_ttlg_config_instantiates(name):
    settings = instantiate(make([f"ttlg={name}"]).ttlg)
    assert isinstance(settings, TTLGSettings)
    assert settings.enabled == (name != "off")
    if "temporal" in name:
        assert settings.temporal_scale > 0


@pytest.mark.parametrize("name", options("io"))
def test_every_io_config_instantiates(name, clip, tmp_path):
    init, edges = clip
    if name == "video":
        import imageio.v3 as iio
        import numpy as np

        iio.imwrite(tmp_path / "clip.mp4", np.zeros((3, 32, 48, 3), np.uint8), fps=8, codec="libx264")
        overrides = ["io=video", f"io.rgb_video={tmp_path / 'clip.mp4'}"]
    elif name == "demo":
        overrides = ["io=demo"]
    elif name == "demo_long":
        overrides = ["io=demo_long", "io.length=4"]
    elif name == "shapes":
        overrides = ["io=shapes", "io.length=4"]
    else:
        overrides = [f"io={name}", f"io.init_frame={init}", f"io.edge_frames_dir={edges}"]
    io = instantiate(make(overrides).io)
    source = open_source(io, RunLayout.resolve(tmp_path / "run", io, MetricsSettings()))
    assert isinstance(source, FrameSource) and len(source) >= 1
    if name in ("demo_long", "shapes"):
        assert len(source) == 3 and source.has_source_frames


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(name):
    cfg = make([f"experiment={name}"])
    assert cfg.model._target_.startswith("qvedit.settings.model.")


def test_every_model_config_instantiates_or_says_why(tiny_pipe):
    releases = {"qwen_edit_2509": "2509", "qwen_edit_2511": "2511", "qwen_image_21": "2.1", "tiny": "2509",
                "tiny_21": "2.1", "random_full": "2509", "random_full_21": "2.1", "toy": "2509"}
    assert set(options("model")) == set(releases)
    for name in sorted(options("model"), key=lambda n: n != "tiny"):  # a failed load frees the loaded model
        cfg = make([f"model={name}"])
        model = instantiate(cfg.model)
        assert model.release == releases[name]
        if name == "tiny":
            assert model == TinyModel.in_cache()  # the folder conf/model/tiny.yaml names is the one bench uses
            assert load_pipeline(model, device="cpu", dtype="fp32") is tiny_pipe
        elif name == "tiny_21":  # loaded by the runs of model=tiny_21 (tests/test_lora.py, test_schedule.py ...)
            assert model == TinyModel.in_cache("2.1") and model.model_id != TinyModel.in_cache().model_id
        elif name == "toy":  # the committed toy model: 2509's pipeline classes at small size (tests/test_toy_model.py)
            assert model == ToyModel.committed() and family_for(model).name == "qwen_edit_plus"
            assert pipeline_class_problem(model, read_index(model.model_id)[0], model.model_id) is None
        elif name.startswith("random_full"):  # timing only, on a GPU
            with pytest.raises(QveditError, match="needs a GPU"):
                load_pipeline(model, device="cpu", dtype="bf16")
        else:  # real weights cannot be fetched here: the error says what to do instead
            with pytest.raises(QveditError, match="model.model_id=/path"):
                load_pipeline(model, device="cpu", dtype="fp32")


@pytest.mark.parametrize("name", options("metrics"))
def test_every_metrics_config_instantiates(name):
    metrics = FrameMetrics(instantiate(make([f"metrics={name}", "metrics.vgg_weights=random"]).metrics), "cpu")
    assert metrics.columns[0] == "frame" and ("edge_loss" in metrics.columns) == (name != "none")


def test_acceptance_thresholds_default_to_the_spec():
    thresholds = instantiate(make().acceptance)
    assert (thresholds.frames, thresholds.edge_ratio, thresholds.edge_frames_fraction, thresholds.gram_ratio,
            thresholds.lpips_prev_min, thresholds.lpips_init_min) == (8, 0.95, 0.6, 0.98, 0.005, 0.01)


@pytest.mark.parametrize("override", ["ttlg.edge_scal=1", "io.init=x.png", "promt=hi"])
def test_misspelt_key_fails_at_compose(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        make([override])


def test_wrong_type_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make(["seed=abc"])


def test_misspelt_key_in_a_yaml_file_fails(tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "ttlg" / "typo.yaml").write_text("defaults:\n  - \"off\"\n  - _self_\nedge_scael: 1.0\n")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        with pytest.raises((ConfigCompositionException, ValidationError), match="edge_scael"):
            compose("config", overrides=["ttlg=typo"])


@pytest.mark.parametrize("key, value, message", [
    ("ttlg.lr", -1.0, "ttlg.lr=-1.0 is out of range: use a number >= 0"),
    ("ttlg.every", 0, "ttlg.every=0 is out of range: use an integer >= 1"),
    ("ttlg.edge_op", "canny", "ttlg.edge_op='canny' is not valid: use sobel or laplacian"),
    ("ttlg.temporal_mode", "warp", "ttlg.temporal_mode='warp' is not valid: use plain or flow"),
    ("ttlg.vgg_weights", "vgg19", "ttlg.vgg_weights='vgg19' is not valid: use imagenet or random"),
    ("flow.method", "farneback", "flow.method='farneback' is not valid: use dis or raft"),
    ("flow.size", 4, "flow.size=4 is out of range: use an integer >= 16, or null"),
    ("flow.raft_weights", "imagenet", "flow.raft_weights='imagenet' is not valid: use pretrained or random"),
    ("io.resize", "cubic", "io.resize='cubic' is not valid: use area or nearest"),
    ("io.edge_op", "canny", "io.edge_op='canny' is not valid: use sobel or laplacian"),
    ("metrics.vgg_weights", "vgg19", "metrics.vgg_weights='vgg19' is not valid: use imagenet or random"),
    ("logger.backend", "wandb", "logger.backend='wandb' is not valid: use none or mlflow"),
    ("tuning.objectives", ["edge_loss", "psnr"], "tuning.objectives names ['psnr']: use edge_loss, gram_loss, "
                                                 "warp_error"),
])
def test_a_value_its_key_does_not_take_is_one_line_before_anything_is_built(key, value, message):
    cfg = OmegaConf.create({})
    OmegaConf.update(cfg, key, value)
    with pytest.raises(QveditError, match=re.escape(message)) as info:
        check_values(cfg)
    assert "\n" not in str(info.value)


FREE_TEXT = {"prompt", "negative_prompt", "device", "anchor.prompt", "first_frame.prompt", "first_frame.negative_prompt",
             "logger.experiment_name", "perf.attention_backend",  # diffusers' kernels: checked as they are set
             "schedule.ray_address"}  # an address: checked by reaching it


def test_every_key_that_takes_words_names_them():
    untagged = [key for key, f in schema_fields().items() if f.type in ("str", "Optional[str]")
                and tags_of(f).path is None and not tags_of(f).choices and key not in FREE_TEXT]
    assert not untagged, f"give these keys choices=(...) or add them to FREE_TEXT: {untagged}"
    assert tags_of(schema_fields()["tuning.objectives"]).choices  # a list: each entry is one of its words


def documented_key_rows() -> dict[str, list[str]]:
    """{key: [default cell, ...]} of docs/configuration.md's key tables (rows ``| `key` | default | ...``); a key two
    io options define apart has a row each."""
    rows: dict[str, list[str]] = {}
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) >= 6 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows.setdefault(cells[0].strip("`"), []).append(cells[1])
    return rows


def documented_default(cell: str) -> str:
    """The value a documented default cell states: ``null = <run dir>/frames`` -> ``null``, `` `bf16` `` -> ``bf16``."""
    return cell.split(" = ")[0].split(" (")[0].strip().strip("`").strip('"') or cell.strip().strip("`").strip('"')


def schema_defaults() -> list[tuple[str, object]]:
    """(key, default) of every key of the schema, each io option's own included (``io.length``: 48 and 24)."""
    import dataclasses

    from qvedit.settings.field_tags import walk
    from qvedit.settings.io import IO_OPTIONS
    from qvedit.settings.schema import QveditConfig

    fields = [*walk(QveditConfig), *(entry for option in IO_OPTIONS for entry in walk(option, "io."))]
    return [(key, f.default) for key, f in fields if f.default not in (dataclasses.MISSING, "???")]


def states(cell: str, default: object) -> bool:
    stated = documented_default(cell)
    if default is None:
        return stated == "null"
    if isinstance(default, bool):
        return stated == str(default).lower()
    if isinstance(default, (int, float)):
        return stated.replace(".", "", 1).isdigit() and float(stated) == default
    return stated == default


def test_configuration_page_documents_every_config_key_with_its_default():
    rows = documented_key_rows()
    defaults = schema_defaults()
    missing = sorted({key for key, _ in defaults} - set(rows))
    assert not missing, f"docs/configuration.md lacks {missing}: run python -m qvedit.settings.reference"
    wrong = [f"{key}: docs/configuration.md says {rows[key]!r}, the schema {default!r}"
             for key, default in defaults if not any(states(cell, default) for cell in rows[key])]
    assert not wrong, wrong


def test_every_key_says_what_it_means():
    from qvedit.settings.field_tags import walk
    from qvedit.settings.io import IO_OPTIONS

    fields = [*schema_fields().items(), *(entry for option in IO_OPTIONS for entry in walk(option, "io."))]
    silent = sorted({key for key, f in fields if len(tags_of(f).help.strip()) < 3})
    assert not silent, f"give these keys a setting(..., help=...) in qvedit/settings/: {silent}"


def test_a_composed_config_survives_pickling_with_its_schema():
    """Launchers (submitit for SLURM, Ray) pickle the job's config: its schema classes must be found
    again by name, or the job sees a node without its fields."""
    import pickle

    from omegaconf import OmegaConf

    from qvedit.cli.override_keys import unknown_config_keys

    cfg = make(["experiment=tiny_cpu", "io=demo", "perf=fp8"])
    again = pickle.loads(pickle.dumps(cfg))
    assert OmegaConf.get_type(again.model) is OmegaConf.get_type(cfg.model)
    assert OmegaConf.get_type(again.io) is OmegaConf.get_type(cfg.io)
    assert again == cfg and unknown_config_keys(again) == []
