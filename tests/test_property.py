"""Whatever a user types for a number, a path, a logger or tuning key, an anchor, first-frame, guidance-decoder or
step-cache key, and whatever small image they give, a run succeeds or stops with one line: hypothesis draws values
for the schema's numeric keys and small random images, odd text for the logger, tuning and path keys, and every
kind of value for the feature keys. Whatever option values a user passes to ``python -m qvedit.bench`` or a script
under ``benchmarks/``, it gets to its work or refuses them in one line with exit code 2.

The keys are read from the schema, with the range each field declares (``setting(min=, max=)``), so
a key added later is drawn too. Each example sets a few keys: in range (kept small where a value
costs time, such as the number of steps), out of range, or not finite. Runs are in-process on the
tiny model on the CPU; ``tests/test_cli.py`` shows that a QveditError reaches the user as one
``qvedit: error:`` line with exit code 2.
"""

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig
from PIL import Image

from qvedit.cli.override_keys import unknown_overrides
from qvedit.cli.override_values import hydra_error_line, override_problems
from qvedit.core.errors import QveditError
from qvedit.run.job import run
from qvedit.settings.field_tags import integral, optional, tags_of
from qvedit.settings.io import FramesIO
from qvedit.settings.schema import register_schemas, schema_fields
from tests.conftest import REPO, write_clip

register_schemas()
BASE = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output",
        "metrics.vgg_weights=random", "ttlg.vgg_weights=random", "max_frames=3"]
# the ranged keys io=frames has (the other io options' keys, io.length of io=demo_long, do not compose with it)
FRAMES_IO_KEYS = {f"io.{f.name}" for f in dataclasses.fields(FramesIO)}
NUMERIC = {key: f for key, f in schema_fields().items()
           if tags_of(f).ranged and (not key.startswith("io.") or key in FRAMES_IO_KEYS)}
# the logger, tuning and path keys io=frames has (model.model_id aside: a new folder builds a tiny model there)
TEXT = sorted(key for key, f in schema_fields().items()
              if (key.startswith(("logger.", "tuning.")) or tags_of(f).path) and key != "model.model_id"
              and (not key.startswith("io.") or key.split(".")[1] in ("init_frame", "edge_frames_dir",
                                                                       "out_frames_dir", "source_frames_dir")))
# odd values ({d}: the example's folder, holding a file "afile"); quoted as text, or given as Hydra reads them
ODD_TEXT = ["", " ", "foo://bar", "{d}/afile/below", "{d}/afile", "{d}/new/deep/x", "{d}/" + "n" * 300,
            "{d}/名 前/x.png", "sqlite:///{d}/afile/x.db", "http://127.0.0.1:9", "mlflow", "none", "edge_loss"]
ODD_RAW = ["null", "[edge_loss]", "[bogus]", "[]", "[1,2]", "{a:1}", "3"]
examples = itertools.count()


def in_range(field: dataclasses.Field) -> st.SearchStrategy:
    """Values the key takes, near its low end: a run must finish with them in seconds."""
    tags = tags_of(field)
    low = tags.min if tags.min is not None else tags.max - 4
    high = low + max(4, abs(low)) if tags.max is None else min(tags.max, low + max(4, abs(low)))
    if integral(field):
        return st.integers(int(math.ceil(low)), int(high))
    return st.floats(low, high, allow_nan=False)


def out_of_range(field: dataclasses.Field) -> st.SearchStrategy:
    tags = tags_of(field)
    wrong = [st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not math.isfinite(v))] \
        if not integral(field) else []
    if tags.min is not None:
        wrong.append(st.integers(-10**6, int(math.ceil(tags.min)) - 1) if integral(field)
                     else st.floats(-1e6, tags.min, exclude_max=True))
    if tags.max is not None:
        wrong.append(st.integers(int(tags.max) + 1, int(tags.max) + 10**6) if integral(field)
                     else st.floats(tags.max, tags.max + 1e6, exclude_min=True))
    return st.one_of(wrong)


@st.composite
def overrides(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(NUMERIC)), max_size=4, unique=True))
    chosen = []
    for key in keys:
        field = NUMERIC[key]
        kinds = [in_range(field), out_of_range(field)] + ([st.none()] if optional(field) else [])
        value = draw(st.one_of(kinds))
        chosen.append(f"{key}={'null' if value is None else repr(value) if isinstance(value, float) else value}")
    return chosen


@st.composite
def images(draw) -> tuple[Image.Image, Image.Image]:
    """An init frame and an edge frame of another size, each 1 to 48 pixels a side."""
    def one(mode):
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        seed = draw(st.integers(0, 2**16))
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels).convert(mode)
    return one(draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))), one("L")


def numbers(overrides_: list[str]) -> str:
    return " ".join(overrides_)


@pytest.mark.long
@settings(max_examples=12, deadline=None, database=None, derandomize=True,  # the same examples in CI as here
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chosen=overrides(), frames=images(), guided=st.booleans())
def test_any_number_and_any_small_image_run_or_stop_with_one_line(tiny_pipe, tmp_path, chosen, frames, guided):
    folder = tmp_path / f"example{next(examples)}"
    (folder / "edges").mkdir(parents=True)
    init, edge = frames
    init.save(folder / "init.png")
    for k in (1, 2):
        edge.save(folder / "edges" / f"{k}.png")
    guidance = ["ttlg=edge_gram_temporal", "ttlg.last_steps=1"] if guided else []
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[*BASE, *guidance, f"io.init_frame={folder / 'init.png'}",
                                           f"io.edge_frames_dir={folder / 'edges'}", *chosen])
    try:
        frames_dir = run(cfg, folder / "run").frames_dir
    except QveditError as err:  # the only way out besides success: one line
        assert "\n" not in str(err) and str(err).strip(), repr(str(err))
        return
    written = sorted(frames_dir.glob("*.png"))
    assert 1 <= len(written) <= 3
    assert all(Image.open(path).size == init.size for path in written)


def test_every_numeric_key_is_drawn():
    assert {"num_inference_steps", "true_cfg_scale", "seed", "condition_area", "max_area", "max_frames",
            "ttlg.lr", "ttlg.gram_size", "metrics.size", "acceptance.edge_ratio", "parallel.cfg_degree"} <= set(NUMERIC)


@st.composite
def text_overrides(draw) -> list[str]:
    """``key=value`` for 1 to 3 of the logger, tuning and path keys (``{d}`` left for the example's folder)."""
    keys = draw(st.lists(st.sampled_from(TEXT), min_size=1, max_size=3, unique=True))
    chosen = []
    for key in keys:
        quoted = draw(st.sampled_from(ODD_TEXT).map(lambda text: "'" + text.replace("'", "\\'") + "'"))
        chosen.append(f"{key}={draw(st.one_of(st.just(quoted), st.sampled_from(ODD_RAW)))}")
    return chosen


def one_line(message: str) -> None:
    assert "\n" not in message and message.strip(), repr(message)


def run_or_one_line(overrides: list[str], run_dir) -> Optional[tuple[DictConfig, Path]]:
    """Run ``overrides`` as python -m qvedit does (their keys and values checked, composed, run into ``run_dir``):
    (the config, its frames folder), or None where it stopped, each way out with one line."""
    problems = unknown_overrides(overrides) + override_problems(overrides)
    for problem in problems:
        one_line(problem)
    if problems:
        return None
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=overrides)
    except HydraException as err:
        one_line(hydra_error_line(err))
        return None
    try:
        return cfg, run(cfg, run_dir).frames_dir
    except QveditError as err:
        one_line(str(err))
        return None


@settings(max_examples=14, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chosen=text_overrides(), backend=st.sampled_from(["none", "mlflow"]))
def test_any_logger_tuning_or_path_value_runs_or_stops_with_one_line(tiny_pipe, tmp_path, chosen, backend):
    """What ``python -m qvedit`` checks before Hydra runs, what Hydra refuses while composing, and the run:
    each either goes on or says one line."""
    folder = tmp_path / f"example{next(examples)}"
    init, edges = write_clip(folder / "clip", size=(16, 16), edges=1)
    (folder / "afile").write_text("a file where a folder might be wanted")
    chosen = [override.replace("{d}", str(folder)) for override in chosen]
    overrides = [*BASE, "max_frames=2", "metrics=none", f"logger={backend}", f"io.init_frame={init}",
                 f"io.edge_frames_dir={edges}", f"logger.tracking_uri='sqlite:///{folder}/afile/mlflow.db'", *chosen]
    made = run_or_one_line(overrides, folder / "run")
    if made is None:
        return
    _, frames_dir = made
    assert len(sorted(frames_dir.glob("*.png"))) == 2


def test_the_text_keys_drawn_include_the_logger_tuning_and_output_paths():
    assert {"logger.tracking_uri", "logger.backend", "logger.experiment_name", "tuning.objectives", "metrics.path",
            "debug_dir", "io.out_frames_dir", "io.init_frame", "model.loras"} <= set(TEXT)


# -- the anchor, first-frame, guidance-decoder and step-cache keys --------------------------------------------

FEATURES = sorted(key for key in schema_fields() if key.split(".")[0] in ("anchor", "first_frame")
                  or key in ("ttlg.decoder", "ttlg.tiny_decoder") or key.startswith("perf.cache"))
ODD_WORDS = ["bogus", "''", "NONE", "null", "1"]  # beside a key's own words
ODD_PROMPTS = ["'make it a watercolour painting'", "''", "' '", "'名 前'", "null", "'a\\'b'"]
ODD_BOOLS = ["true", "false", "yes", "2", "null", "''"]
# {d}/decoder holds a folder named taew2_1.safetensors (no weights file); {d}/afile is a file of text
ODD_DECODERS = ["random", "{d}/decoder", "{d}/decoder/taew2_1.safetensors", "{d}/afile", "{d}/nope", "owner/name",
                "null", "''"]


def feature_value(key: str) -> st.SearchStrategy:
    """The values drawn for one of ``FEATURES``, as a command line gives them."""
    field, tags = schema_fields()[key], tags_of(schema_fields()[key])
    if key == "ttlg.tiny_decoder":
        return st.sampled_from(ODD_DECODERS)
    if tags.choices:
        return st.sampled_from([*tags.choices, *ODD_WORDS])
    if tags.ranged:
        number = st.one_of(in_range(field), out_of_range(field)).map(lambda v: repr(v) if isinstance(v, float)
                                                                     else str(v))
        return st.one_of(number, st.sampled_from(["null", "abc"]))
    if "bool" in str(field.type):
        return st.sampled_from(ODD_BOOLS)
    return st.sampled_from(ODD_PROMPTS)  # prompts


@st.composite
def feature_overrides(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(FEATURES), min_size=1, max_size=3, unique=True))
    return [f"{key}={draw(feature_value(key))}" for key in keys]


@pytest.mark.long
@settings(max_examples=24, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chosen=feature_overrides(), guided=st.booleans())
@example(chosen=["ttlg.decoder=tiny", "ttlg.tiny_decoder={d}/decoder"], guided=True)  # a folder named as the file
@example(chosen=["first_frame.prompt='make it blue'", "first_frame.candidates=2", "first_frame.pick=1",
                 "anchor=color"], guided=False)
@example(chosen=["first_frame.only=true", "first_frame.prompt='make it blue'", "perf.cache=taylorseer"], guided=True)
def test_any_anchor_first_frame_decoder_or_cache_value_runs_or_stops_with_one_line(tiny_pipe, tmp_path, chosen,
                                                                                   guided):
    """anchor.*, first_frame.*, ttlg.decoder / tiny_decoder and perf.cache*: what is checked before Hydra runs,
    what Hydra refuses while composing, and the run each go on or say one line."""
    folder = tmp_path / f"example{next(examples)}"
    init, edges = write_clip(folder / "clip", size=(16, 16), edges=1)
    (folder / "afile").write_text("a file where a folder or weights might be wanted")
    (folder / "decoder" / "taew2_1.safetensors").mkdir(parents=True)  # a folder with the weights file's name
    chosen = [override.replace("{d}", str(folder)) for override in chosen]
    guidance = ["ttlg=edge", "ttlg.last_steps=1"] if guided else []
    overrides = [*BASE, "max_frames=2", "metrics=none", "first_frame.num_inference_steps=2", *guidance,
                 f"io.init_frame={init}", f"io.edge_frames_dir={edges}", *chosen]
    made = run_or_one_line(overrides, folder / "run")
    if made is None:
        return
    cfg, frames_dir = made
    if cfg.first_frame.only:  # the candidates alone, no clip
        assert not list(frames_dir.glob("*.png")) and list((folder / "run" / "first_frame").glob("candidate_*.png"))
    else:
        assert len(sorted(frames_dir.glob("*.png"))) == 2


def test_the_feature_keys_drawn_include_each_group():
    assert {"anchor.color", "anchor.every", "anchor.prompt", "anchor.first_frame_image", "first_frame.prompt",
            "first_frame.pick", "first_frame.only", "ttlg.decoder", "ttlg.tiny_decoder", "perf.cache",
            "perf.cache_order"} <= set(FEATURES)


# -- the tools' options: python -m qvedit.bench and every script under benchmarks/ ------------------------------

def load_tools() -> dict:
    """{name: module} of qvedit.bench and each benchmarks/ script (imported from its file)."""
    import importlib.util
    import sys

    from qvedit.cli import bench

    tools = {"qvedit.bench": bench}
    sys.path.insert(0, str(REPO / "benchmarks"))  # ray_sweep imports context_parallel, its neighbour
    try:
        for script in sorted((REPO / "benchmarks").glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            tools[f"benchmarks/{script.name}"] = module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return tools


TOOLS = load_tools()
# odd values for any option ({d}: the example's folder, holding a file "afile")
ODD_ARGS = ["0", "-1", "1", "16", "17", "64", "4096", "8192", "abc", "", "nan", "inf", "1e3", "null", "{d}/afile",
            "{d}/afile/below", "{d}/new/out", "{d}/new/out.json", "cuda", "cpu", "1 GPU,ring 2", "2,1", "x/y"]
ODD_EXTRAS = ["max_frames=2", "max_frame=2", "seed=-1", "--steps", "ttlg=edge_gram", "word"]


class Reached(Exception):
    """The tool got past every check of its arguments to the work itself (stubbed here)."""


@st.composite
def tool_arguments(draw) -> tuple[str, list[str]]:
    """(tool, argv): a few of its options with odd values; its required ones first (a folder for --out), and the
    bench on the tiny model on the CPU unless the draw says otherwise (so it gets as far as its checks go)."""
    name = draw(st.sampled_from(sorted(TOOLS) + ["qvedit.bench"] * 4))
    actions = [a for a in TOOLS[name].build_parser()._actions if a.dest != "help"]
    argv = ["--out", "{d}/out"] if any(a.required and a.option_strings == ["--out"] for a in actions) else []
    if name == "qvedit.bench":
        argv += ["--model", "tiny", "--device", "cpu", "--sizes", "16"]
    for action in draw(st.lists(st.sampled_from(actions), max_size=4, unique_by=lambda a: a.dest)):
        values = st.sampled_from([*(action.choices or []), *ODD_ARGS])
        if not action.option_strings:  # a positional: overrides handed to qvedit
            argv += draw(st.lists(st.sampled_from(ODD_EXTRAS), max_size=2))
        elif action.nargs == 0:  # a flag
            argv.append(action.option_strings[-1])
        else:
            count = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
            argv += [action.option_strings[-1], *(draw(values) for _ in range(count))]
    return name, argv


@pytest.mark.long
@settings(max_examples=45, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=tool_arguments())
def test_any_option_of_the_bench_and_every_benchmark_script_runs_or_stops_with_one_line(drawn, tmp_path,
                                                                                        monkeypatch, capsys):
    """Whatever a user passes, each tool refuses it in one ``qvedit: error:`` line with exit code 2, or gets to its
    work (stubbed: the bench's pipeline load, a script's measurement)."""
    name, argv = drawn
    folder = tmp_path / f"example{next(examples)}"
    folder.mkdir()
    (folder / "afile").write_text("a file where a folder might be wanted")
    argv = [arg.replace("{d}", str(folder)) for arg in argv]
    module = TOOLS[name]
    with monkeypatch.context() as patch:
        if name == "qvedit.bench":
            patch.setattr(module, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(Reached()))
        else:
            patch.setattr(module, "measure", lambda args: (_ for _ in ()).throw(Reached()))
        try:
            code = module.main(argv)
        except SystemExit as exit:
            code = exit.code
        except Reached:
            code = None
    err = capsys.readouterr().err
    if code is None:
        return
    assert code == 2, (name, argv, code, err)
    (line,) = [line for line in err.splitlines() if line.startswith("qvedit: error:")] or [err]
    assert err.strip() == line.strip() or name == "qvedit.bench", (name, argv, err)  # the bench's warnings aside
    one_line(line)


def test_the_tools_drawn_are_the_bench_and_every_benchmark_script():
    assert set(TOOLS) == {"qvedit.bench"} | {f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("*.py")}
    assert all(hasattr(module, "build_parser") and hasattr(module, "main") for module in TOOLS.values())
