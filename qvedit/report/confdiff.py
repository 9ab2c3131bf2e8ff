"""Which config keys differ between two runs: ``python -m qvedit.diff RUN_A RUN_B``.

Reads each run's ``.hydra/config.yaml`` (the composed config) and ``.hydra/overrides.yaml``
(what was typed on the command line). Exit code 0 when the configs are equal, 1 when they differ,
2 when a folder is not a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from qvedit.core.errors import QveditError

MISSING = "<absent>"


def flatten(node, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> {"a.b.c": value}; lists stay values."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_run(run_dir: str | Path) -> tuple[dict[str, object], list[str]]:
    """(flat composed config, overrides) of a run folder; interpolations are kept as written."""
    hydra_dir = Path(run_dir) / ".hydra"
    config_file = hydra_dir / "config.yaml"
    if not config_file.is_file():
        raise QveditError(f"{run_dir} is not a qvedit run folder: {config_file} is missing")
    config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    return flatten(config), [str(o) for o in overrides]


def diff_configs(a: dict[str, object], b: dict[str, object]) -> list[tuple[str, object, object]]:
    """(key, value in a, value in b) for every key whose value differs, sorted by key."""
    return [(key, a.get(key, MISSING), b.get(key, MISSING)) for key in sorted(set(a) | set(b))
            if a.get(key, MISSING) != b.get(key, MISSING)]


def group_contexts(groups: list[tuple]) -> dict[tuple, str]:
    """For each group of jobs (its sorted (key, repr(value)) settings), ``key=value`` of the settings whose values
    differ between the groups of the sweep (``anchor.color='mean_std'``), so its comparisons can be told apart."""
    varying = sorted({key for group in groups for key, _ in group
                      if len({dict(other).get(key) for other in groups}) > 1})
    def shown(value: str) -> str:  # the repr of a word without its quotes
        return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value

    return {group: ",".join(f"{key}={shown(dict(group).get(key, '-'))}" for key in varying) for group in groups}


def resolved(run_dir: str | Path, flat: dict[str, object]) -> dict[str, object]:
    """``flat`` (a run's config, ``load_run``) with each interpolation that can be resolved here replaced by its value
    (``${qvedit.cache:tiny-qwen-image-edit-2509}`` -> the folder in qvedit's cache, ``$QVEDIT_CACHE``); one that
    cannot (``${hydra:...}``, which only a running Hydra knows) stays as written."""
    from qvedit.settings.schema import register_schemas

    register_schemas()  # qvedit's resolvers
    config = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    values = dict(flat)
    for key, value in flat.items():
        if isinstance(value, str) and "${" in value:
            try:
                values[key] = OmegaConf.select(config, key, throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001 - any resolver's failure: the value as written
                pass
    return values


def format_diff(run_a: str | Path, run_b: str | Path) -> tuple[str, bool]:
    """A readable report of the differences and whether there are any."""
    (config_a, overrides_a), (config_b, overrides_b) = load_run(run_a), load_run(run_b)
    config_a, config_b = resolved(run_a, config_a), resolved(run_b, config_b)
    differences = diff_configs(config_a, config_b)
    lines = [f"A: {run_a}", f"B: {run_b}"]
    if not differences:
        lines.append("configs are identical")
    else:
        width = max(len(key) for key, _, _ in differences)
        lines.append(f"{len(differences)} key(s) differ:")
        lines += [f"  {key:<{width}}  {value_a!r} -> {value_b!r}" for key, value_a, value_b in differences]
    only_a = [o for o in overrides_a if o not in overrides_b]
    only_b = [o for o in overrides_b if o not in overrides_a]
    if only_a or only_b:
        lines.append("overrides only in A: " + (" ".join(only_a) or "-"))
        lines.append("overrides only in B: " + (" ".join(only_b) or "-"))
    return "\n".join(lines), bool(differences)


def main(argv: list[str] | None = None) -> int:
    from qvedit.core.tool_parser import OneLineParser, emit

    parser = OneLineParser(
        prog="python -m qvedit.diff", description="Config keys that differ between two runs (or sweep jobs): each key "
        "whose value differs, A's value -> B's, then the command-line overrides only one of them had.",
        epilog="Each folder is a run folder (hydra.run.dir) or a sweep's job folder: its .hydra/config.yaml (the "
               "composed config) and .hydra/overrides.yaml (what was typed) are read. Values are shown resolved as "
               "on this machine (model.model_id=${qvedit.cache:...}: the folder in qvedit's cache, $QVEDIT_CACHE). "
               "Exit code: 0 the configs are equal, 1 they differ, 2 a folder is not a run folder (or bad arguments).")
    parser.add_argument("run_a", metavar="RUN_A", help="the first run folder, e.g. runs/2026-12-01/14-09-01")
    parser.add_argument("run_b", metavar="RUN_B", help="the run folder to compare it with")
    args = parser.parse_args(argv)
    try:
        text, differ = format_diff(args.run_a, args.run_b)
    except QveditError as err:
        print(f"qvedit: error: {err}", file=sys.stderr)
        return 2
    emit(text)
    return 1 if differ else 0
