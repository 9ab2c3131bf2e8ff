"""docs/configuration.md, rendered from the schema: every config group with its options, every key with its default,
what it takes, whether it changes the frames, the design's flag it replaces and its ``help=`` text.

The page is generated, never edited by hand, so it cannot drift from the settings: edit a field's ``help=`` (or its
tags) in ``qvedit/settings/<group>.py`` and run ``python -m qvedit.settings.reference`` from the repository root;
``--check`` says whether the committed page is the one the schema gives (``tests/test_docs.py`` runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Any, Optional

from qvedit.settings.field_tags import accepted, nested_schemas, tags_of, walk
from qvedit.settings.io import IO_OPTIONS
from qvedit.settings.schema import CONF_DIR, QveditConfig

PAGE = CONF_DIR.parent / "docs" / "configuration.md"
REGENERATE = "python -m qvedit.settings.reference"

# the io group's options, in the order of IO_OPTIONS (conf/io/<name>.yaml)
IO_NAMES = {"FramesIO": "frames", "DemoIO": "demo", "LongDemoIO": "demo_long", "ShapesIO": "shapes", "VideoIO": "video"}
# groups without a node of their own in the schema: presets over other groups' keys, and Hydra's own
PRESET_GROUPS = {
    "experiment": "presets over many groups' keys (`# @package _global_`)",
    "hparams_search": "an Optuna search over guidance keys (`-m`; see [reports and tracking](reports.md))",
    "hydra/launcher": "where a sweep's jobs run: `basic` (Hydra's, one after another), `ray`, `slurm` "
                      "(`pip install -e \".[distributed]\"`; see [scale-out](scale-out.md))",
}


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def shown(value: Any) -> str:
    """A default as one writes it on the command line: ``null``, ``true``, ``bf16``, ``" "``, ``[a, b]``, ``{}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '`" "`' if not value.strip() else f"`{value}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    return str(value)


def takes(field: dataclasses.Field) -> str:
    """What a key accepts, in words."""
    tags = tags_of(field)
    if tags.ranged or tags.choices:
        return accepted(field)
    kind = str(field.type)
    if "list" in kind.lower() and tags.path:
        return "a list of files"
    if tags.path:
        return f"a path ({tags.path})" + (", or null" if field.default is None else "")
    if "bool" in kind:
        return "true or false"
    if "list" in kind.lower():
        return "a list"
    if "dict" in kind.lower():
        return "a mapping"
    if "int" in kind:
        return "an integer" + (", or null" if "Optional" in kind else "")
    return "text" + (", or null" if "Optional" in kind or field.default is None else "")


def options(group: str) -> list[tuple[str, str]]:
    """(option, what its file says first) of ``conf/<group>/*.yaml``, the default first."""
    found = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        comment = " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines()
                           if line.startswith("#") and "@package" not in line)
        first = re.split(r"(?<=\.)\s", comment, maxsplit=1)[0].rstrip(".") if comment else ""
        found.append((path.stem, first))
    return found


def defaults_list() -> dict[str, str]:
    """{group: default option} from conf/config.yaml's defaults list."""
    chosen = {}
    for line in (CONF_DIR / "config.yaml").read_text().splitlines():
        match = re.match(r"\s*-\s*([\w/]+):\s*\"?([\w]+)\"?", line)
        if match:
            chosen[match.group(1)] = match.group(2)
    return chosen


def key_table(rows: list[tuple[str, dataclasses.Field, str]]) -> list[str]:
    """A table of (key, field, where) rows."""
    lines = ["| key | default | takes | changes frames | design flag | meaning |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, field, where in rows:
        tags = tags_of(field)
        meaning = f"{where}: {tags.help}" if where and not tags.help.startswith("`io=") else tags.help
        lines.append(f"| `{key}` | {cell(shown(default_of(field)))} | {cell(takes(field))} | "
                     f"{'yes' if tags.frames else ''} | {f'`{tags.flag}`' if tags.flag else ''} | {cell(meaning)} |")
    return lines


def io_rows() -> list[tuple[str, dataclasses.Field, str]]:
    """One row per io field, naming the options that have it (a key two options define apart gets a row each)."""
    rows: dict[tuple[str, str, Any], tuple[dataclasses.Field, list[str]]] = {}
    for option in IO_OPTIONS:
        for key, field in walk(option, "io."):
            ident = (key, tags_of(field).help, repr(default_of(field)))
            rows.setdefault(ident, (field, []))[1].append(IO_NAMES[option.__name__])
    return [(ident[0], field, ", ".join(f"`io={name}`" for name in names) if len(names) < len(IO_OPTIONS) else "")
            for ident, (field, names) in rows.items()]


def section_of(group: str) -> list[tuple[str, dataclasses.Field, str]]:
    if group == "io":
        return io_rows()
    node = nested_schemas(QveditConfig)[group]
    return [(key, field, "") for key, field in walk(node, f"{group}.")]


def group_title(group: str) -> str:
    node = nested_schemas(QveditConfig).get(group)
    doc = (node.__mro__[1].__doc__ or "") if node else ""
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""


def render() -> str:
    """The whole page."""
    chosen = defaults_list()
    groups = [name for name in nested_schemas(QveditConfig)] + ["io"]
    groups = sorted(set(groups), key=list(chosen).index)
    out = ["# Configuration keys", "",
           f"<!-- generated by `{REGENERATE}` from qvedit/settings/: edit a field's help= there, not this page -->", "",
           "Hydra composes `conf/config.yaml` with one option from each group; every key can be overridden on the "
           "command line (`key=value`, a group's option with `group=option`), and every YAML file is checked against "
           "the schema: each key is a dataclass field in `qvedit/settings/<group>.py`, so a misspelt key or a wrong "
           "type fails before anything runs, naming the closest real key. A value out of a key's range or choices "
           "is one line saying what it takes. This page is generated from those fields; "
           f"`{REGENERATE}` writes it again.", "",
           "\"changes frames\": the resume manifest records the key, and a run folder only takes more frames made with "
           "the same value ([resuming](running.md#resuming-after-a-crash)). \"design flag\": the command-line flag of "
           "the original design ([METHOD.md](METHOD.md), section 6) the key replaces; keys without one are "
           "qvedit's additions.", "", "## Groups", "", "| group | options (default first) |", "| --- | --- |"]
    for group in [*(group for group in chosen if group not in PRESET_GROUPS), *PRESET_GROUPS]:  # the presets last
        if group == "hydra" or not (CONF_DIR / group).is_dir():
            continue
        names = [name for name, _ in options(group)]
        names.sort(key=lambda name: name != chosen.get(group))
        listed = ", ".join(f"`{name}`" + (" (default)" if name == chosen.get(group) else "") for name in names)
        extra = f"; {PRESET_GROUPS[group]}" if group in PRESET_GROUPS else ""
        out.append(f"| `{group}` | {listed}{cell(extra)} |")
    out += ["", "## Top-level keys", "", *key_table([(key, field, "") for key, field in walk(QveditConfig)
                                                     if "." not in key and key != "io"])]
    for group in groups:
        out += ["", f"## `{group}`", ""]
        title = group_title(group)
        if title:
            out += [title, ""]
        described = options(group)
        if described:
            out += [f"- `{group}={name}`: {cell(text) or '(no description)'}" for name, text in described] + [""]
        out += key_table(section_of(group))
    return "\n".join(out) + "\n"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page differs from the schema's")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE} is not the page the schema gives: run `{REGENERATE}` and commit it", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
