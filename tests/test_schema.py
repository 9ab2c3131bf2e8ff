"""One owner for every setting: the key lists qvedit needs are derived from the schema's tags, and
the package keeps its shape (no import cycles, a schema that loads without the runtime, small modules)."""

import ast
import dataclasses
import json
import subprocess
import sys
from typing import Optional

from hydra import compose, initialize_config_dir

from qvedit.run.config_values import frame_settings
from qvedit.settings.field_tags import keys_where, setting
from qvedit.settings.schema import QveditConfig, folder_name_excluded_keys, output_path_keys, register_schemas, schema_keys
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
                                                          "perf.layerwise_fp8_storage", "perf.single_frame_vae", *cache}
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
    code = ("import sys, json, qvedit.settings.schema; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('qvedit', 'torch', 'diffusers'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                       check=True).stdout)
    allowed = {"qvedit", "qvedit.core", "qvedit.core.errors", "qvedit.settings.field_tags", "qvedit.core.files"}
    assert "qvedit.settings.schema" in loaded
    assert all(m in allowed or m.startswith("qvedit.settings") for m in loaded), loaded


# The rooms of the package from the bottom up: a module may import its own room and the rooms of its layer or
# below, never a room above (docs/architecture.md). A room is a top-level module or a subpackage.
LAYERS = (
    ("qvedit", "core"),
    ("settings",),
    ("models",),
    ("guidance",),
    ("io",),
    ("anchor", "start", "scoring"),
    ("report", "toy"),
    ("run",),
    ("cli",),
    ("__main__", "accept", "bench", "diff", "selftest"),  # the commands users type: `python -m qvedit[.X]`
)
# what a settings module (data only) may import: the settings beside it and the leaves that tag and check fields
SETTINGS_MAY_IMPORT = ("qvedit.settings", "qvedit.core.errors", "qvedit.settings.field_tags", "qvedit.core.files")


def package_modules(root=REPO) -> dict[str, ast.Module]:
    return {".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"):
            ast.parse(path.read_text()) for path in (root / "qvedit").rglob("*.py")}


def imported_modules(name: str, tree: ast.Module, modules) -> set[str]:
    """The qvedit modules ``name`` imports anywhere: at module level, inside functions, under TYPE_CHECKING."""
    package = name if f"{name}.__init__" in modules or any(m.startswith(f"{name}.") for m in modules) \
        else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:  # from qvedit import locks: the module qvedit.core.locks
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root=REPO) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imported_modules(name, tree, modules) for name, tree in modules.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each group of nodes of ``graph`` ({node: nodes it points at}) that reach
    each other, smallest node first."""
    reach = {}
    for node in graph:  # every node reachable from node (the graphs here have at most a hundred nodes)
        seen, todo = set(), list(graph[node])
        while todo:
            other = todo.pop()
            if other not in seen:
                seen.add(other)
                todo += graph.get(other, ())
        reach[node] = seen
    found, covered = [], set()
    for node in sorted(graph):
        if node in reach[node] and node not in covered:
            group = {other for other in reach[node] if node in reach.get(other, ())}
            covered |= group
            before, todo = {}, [node]  # breadth first inside the group, back to node: a shortest cycle
            while node not in before:
                current = todo.pop(0)
                for other in sorted(graph[current] & group):
                    if other not in before:
                        before[other] = current
                        todo.append(other)
            path = [node]
            while len(path) == 1 or path[-1] != node:
                path.append(before[path[-1]])
            found.append(path[::-1])
    return found


def is_settings(module: str) -> bool:
    return module.startswith("qvedit.settings") or module.endswith(".settings")


def import_problems(root=REPO) -> list[str]:
    """Every way the package's imports break its shape: a cycle of modules, a cycle of rooms, a settings module
    importing runtime code, a room importing one of a higher layer, a room no layer names."""
    graph = import_graph(root)
    problems = []
    problems += ["import cycle: " + " -> ".join(cycle) for cycle in cycles(graph)]
    rooms = {}
    for module, imported in graph.items():
        rooms.setdefault(room(module), set()).update(room(m) for m in imported if room(m) != room(module))
    problems += ["import cycle of rooms: " + " -> ".join(cycle) for cycle in cycles(rooms)]
    for module, imported in sorted(graph.items()):
        if is_settings(module):
            problems += [f"{module} (settings: data only) imports {m}" for m in sorted(imported)
                         if not (m.startswith(SETTINGS_MAY_IMPORT) or is_settings(m))]
    layer = {name: depth for depth, names in enumerate(LAYERS) for name in names}
    problems += [f"{name} is in no layer of LAYERS: place it" for name in sorted(rooms) if name not in layer]
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if layer.get(room(other), -1) > layer.get(room(module), len(LAYERS)):
                problems.append(f"{module} imports {other}: {room(other)} is a layer above {room(module)}")
    return problems


def test_imports_run_down_the_layers_without_cycles():
    problems = import_problems()
    assert not problems, "\n".join(problems)


def test_the_import_check_reads_imports_inside_functions(tmp_path):
    package = tmp_path / "qvedit"
    (package / "settings").mkdir(parents=True)
    (package / "models").mkdir()
    for path in ("__init__.py", "settings/__init__.py", "models/__init__.py"):
        (package / path).write_text("")
    (package / "settings" / "model.py").write_text("def load():\n    from qvedit.models import loading\n")
    (package / "models" / "loading.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                   "    from qvedit.settings.model import load\n")
    problems = import_problems(tmp_path)
    assert "import cycle: qvedit.models.loading -> qvedit.settings.model -> qvedit.models.loading" in problems
    assert "qvedit.settings.model (settings: data only) imports qvedit.models.loading" in problems
    assert "qvedit.settings.model imports qvedit.models.loading: models is a layer above settings" in problems


def test_no_module_is_over_400_lines():
    long = {path.name: n for path in (REPO / "qvedit").rglob("*.py") if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_every_conf_group_has_its_schema():
    groups = {f.name for f in dataclasses.fields(QveditConfig) if f.default_factory is not dataclasses.MISSING}
    groups.add("io")
    presets = {"experiment", "hparams_search", "hydra"}  # @package _global_ presets and Hydra's own groups
    assert groups == {p.name for p in (REPO / "conf").iterdir() if p.is_dir()} - presets


def test_pytest_tmp_paths_lie_in_the_sessions_own_folder_which_its_end_removes(tmp_path, tmp_path_factory):
    from tests.conftest import SESSION_TMP

    # pytest's own folders (pytest-of-<user>/pytest-N, an xdist worker's popen-gw*) are inside the session's folder,
    # which pytest_sessionfinish removes: nothing of the suite stays in the system's temporary folder
    assert SESSION_TMP in tmp_path.parents and SESSION_TMP in tmp_path_factory.getbasetemp().parents
