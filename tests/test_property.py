"""Whatever a user types for a number, a path, a logger or tuning key, and whatever small image they give,
a run succeeds or stops with one line: hypothesis draws values for the schema's numeric keys and small
random images, and odd text for the logger, tuning and path keys.

The keys are read from the schema, with the range each field declares (``setting(min=, max=)``), so
a key added later is drawn too. Each example sets a few keys: in range (kept small where a value
costs time, such as the number of steps), out of range, or not finite. Runs are in-process on the
tiny model on the CPU; ``tests/test_cli.py`` shows that a QveditError reaches the user as one
``qvedit: error:`` line with exit code 2.
"""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qvedit.errors import QveditError
from qvedit.fields import integral, optional, tags_of
from qvedit.job import run
from qvedit.keys import unknown_overrides
from qvedit.settings.schema import register_schemas, schema_fields
from qvedit.values import hydra_error_line, override_problems
from tests.conftest import REPO, write_clip

register_schemas()
BASE = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output",
        "metrics.vgg_weights=random", "ttlg.vgg_weights=random", "max_frames=3"]
NUMERIC = {key: f for key, f in schema_fields().items() if tags_of(f).ranged}
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
        frames_dir = run(cfg, folder / "run")
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
    problems = unknown_overrides(overrides) + override_problems(overrides)
    for problem in problems:
        one_line(problem)
    if problems:
        return
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=overrides)
    except HydraException as err:
        one_line(hydra_error_line(err))
        return
    try:
        frames_dir = run(cfg, folder / "run")
    except QveditError as err:
        one_line(str(err))
        return
    assert len(sorted(frames_dir.glob("*.png"))) == 2


def test_the_text_keys_drawn_include_the_logger_tuning_and_output_paths():
    assert {"logger.tracking_uri", "logger.backend", "logger.experiment_name", "tuning.objectives", "metrics.path",
            "debug_dir", "io.out_frames_dir", "io.init_frame", "model.loras"} <= set(TEXT)
