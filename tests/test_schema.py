"""One owner for every setting: the key lists qvedit needs are derived from the schema's tags, and
the package keeps its shape (no import cycles, a schema that loads without the runtime, small modules)."""

import ast
import dataclasses
import json
import subprocess
import sys
from typing import Optional

import pytest
from hydra import compose, initialize_config_dir

from qvedit.config import (QveditConfig, folder_name_excluded_keys, frame_settings, output_path_keys, register_schemas,
                           schema_keys)
from qvedit.fields import keys_where, setting
from tests.conftest import REPO

register_schemas()


def make(overrides=(), hydra=False):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_frame_affecting_keys_are_the_tagged_ones():
    keys = set(frame_settings(make(["experiment=demo"])))
    assert {"seed", "prompt", "num_inference_steps", "dtype", "model.model_id", "io.init_frame", "io.resize",
            "ttlg.edge_scale", "ttlg.lr", "parallel.ulysses_degree", "parallel.ring_degree"} <= keys
    # cfg parallelism gives the single-process frames; the others never change what is computed
    assert not keys & {"parallel.cfg_degree", "ttlg.decode_checkpointing", "device", "max_frames", "debug_dir",
                       "io.out_frames_dir", "model._target_", "ttlg._target_"}
    assert not [k for k in keys if k.split(".")[0] in ("metrics", "acceptance")]
    # of perf, only what rounds weights to 8 bits or reuses work across steps changes frames
    cache = {"perf.cache", "perf.cache_interval", "perf.cache_start_step", "perf.cache_stop_step", "perf.cache_order",
             "perf.cache_threshold"}
    assert {k for k in keys if k.startswith("perf.")} == {"perf.quantize", "perf.fp8_keep_bf16",
                                                          "perf.layerwise_fp8_storage", *cache}
    video = set(frame_settings(make(["io=video"])))
    assert {"io.rgb_video", "io.edge_video", "io.edge_op"} <= video and "io.keep_frames" not in video


def test_a_tagged_field_is_all_it_takes():
    @dataclasses.dataclass
    class NewGroup:
        strength: float = setting(1.0, frames=True)
        cache_folder: Optional[str] = setting(None, path="output")
        verbose: bool = setting(False)

    assert keys_where(NewGroup, lambda t: t.frames, "new.") == ["new.strength"]
    assert keys_where(NewGroup, lambda t: t.path == "output", "new.") == ["new.cache_folder"]


def test_sweep_folder_names_leave_out_every_path_key():
    excluded = list(make(hydra=True).hydra.job.config.override_dirname.exclude_keys)
    assert excluded == folder_name_excluded_keys()
    every_path = schema_keys(lambda tags: tags.path is not None)
    assert set(every_path) <= set(excluded) and {"io.edges_dir", "debug_dir", "metrics.path"} <= set(every_path)
    assert "seed" not in excluded and "ttlg.edge_scale" not in excluded


def test_output_paths_are_what_pairing_ignores():
    from qvedit.report.acceptance import UNPAIRED_KEYS

    assert set(UNPAIRED_KEYS) == {"seed", *output_path_keys()}
    assert set(output_path_keys()) == {"io.out_frames_dir", "io.out_video", "io.edges_dir", "metrics.path", "debug_dir",
                                       "logger.tracking_uri"}


def test_the_schema_loads_without_torch_diffusers_or_runtime_modules():
    code = ("import sys, json, qvedit.config; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('qvedit', 'torch', 'diffusers'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                       check=True).stdout)
    allowed = {"qvedit", "qvedit.config", "qvedit.errors", "qvedit.fields", "qvedit.files"}
    assert all(m in allowed or m.endswith(".settings") or m.count(".") == 1 and m.split(".")[1] in
               ("io", "guidance", "models", "report", "anchor") for m in loaded), loaded


def package_modules() -> dict[str, ast.Module]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"):
            ast.parse(path.read_text()) for path in (REPO / "qvedit").rglob("*.py")}


def module_level_imports(tree: ast.Module) -> set[str]:
    """qvedit modules imported at import time (not inside functions, not under TYPE_CHECKING)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qvedit"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("qvedit")}
    return found


def test_no_import_cycles():
    modules = package_modules()
    graph = {name: {m for m in module_level_imports(tree) if m in modules and m != name}
             for name, tree in modules.items()}
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            pytest.fail("import cycle: " + " -> ".join(visiting[visiting.index(name):] + [name]))
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_module_is_over_400_lines():
    long = {path.name: n for path in (REPO / "qvedit").rglob("*.py") if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_every_conf_group_has_its_schema():
    groups = {f.name for f in dataclasses.fields(QveditConfig) if f.default_factory is not dataclasses.MISSING}
    groups.add("io")
    presets = {"experiment", "hparams_search", "hydra"}  # @package _global_ presets and Hydra's own groups
    assert groups == {p.name for p in (REPO / "conf").iterdir() if p.is_dir()} - presets
