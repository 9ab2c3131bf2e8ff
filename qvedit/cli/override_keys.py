"""The keys a user may type: a misspelt one fails with the closest real key, and ``--help`` lists them.

Hydra rejects an unknown key only when it is typed without ``+``, and then suggests adding the ``+``,
which would store the typo beside the real key and run. qvedit checks every override against the
schema before Hydra composes (``unknown_overrides``) and every key of the composed config after
(``unknown_config_keys``: what a ``+`` or a run folder's YAML slipped in).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from qvedit.settings.model import LoraSpec
from qvedit.settings.schema import CONF_DIR, schema_fields

LIST_ENTRIES = {"model.loras": LoraSpec}  # keys holding a list of entries, and the dataclass an entry is


def config_groups() -> dict[str, list[str]]:
    """{group: its options} from ``conf/`` (schema nodes and Hydra's own groups left out)."""
    groups = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        name = folder.relative_to(CONF_DIR).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and (not name.startswith("hydra") or name == "hydra/launcher"):
            groups[name] = options
    return groups


def default_options() -> dict[str, str]:
    """{group: option} that ``conf/config.yaml``'s defaults list picks."""
    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    return {group: str(option) for entry in entries if isinstance(entry, dict)
            for group, option in entry.items() if not group.startswith("override ") and option is not None}


def known_names() -> list[str]:
    """Every key and group a command line may name (``hydra.*`` keys are Hydra's to judge)."""
    return [*schema_fields(), *config_groups()]


def closest(name: str) -> Optional[str]:
    """The known key or group most like ``name``, if one is close."""
    matches = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.6)
    if not matches and "." in name:  # a right group with a wrong leaf: suggest within the group
        group = name.split(".")[0]
        leaves = [k for k in known_names() if k.startswith(f"{group}.")]
        matches = difflib.get_close_matches(name, leaves, n=1, cutoff=0.4)
    return matches[0] if matches else None


def unknown_key_message(name: str, where: str) -> str:
    guess = closest(name)
    hint = f"did you mean {guess}?" if guess else "python -m qvedit --help lists the groups and keys"
    return f"unknown key {name} ({where}): {hint} Every key is in docs/configuration.md"


def parsed_overrides(argv: list[str]) -> list:
    """The command line's overrides as Hydra parses them (``Override`` objects); none when one is malformed:
    Hydra says what is wrong with it when it composes (``hydra_error_line``)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args, _ = get_args_parser().parse_known_args(argv)
        return OverridesParser.create().parse_overrides(args.overrides)
    except (HydraException, SystemExit):
        return []


def overrides_last(argv: list[str]) -> list[str]:
    """``argv`` with every override after Hydra's own options, in the order typed: Hydra takes the overrides as one
    run of words, so ``experiment=demo -m seed=0,1`` (an override after ``-m``, as users type) was refused."""
    from hydra._internal.utils import get_args_parser

    args, unknown = get_args_parser().parse_known_args(argv)
    stray = [arg for arg in unknown if "=" in arg and not arg.startswith("-")]
    if not stray:
        return argv
    left = Counter([*args.overrides, *stray])
    overrides = []
    for arg in argv:
        if left[arg]:
            left[arg] -= 1
            overrides.append(arg)
    options = list(argv)
    for arg in overrides:
        options.remove(arg)
    return options + overrides


def argument_problems(argv: list[str]) -> list[str]:
    """What is not an override at all, one line: an option in argparse's habit (``--max-frames 6``: qvedit takes
    ``max_frames=6``), or a word without ``=`` (the rest of an unquoted path with a space, most often)."""
    from hydra._internal.utils import get_args_parser

    args, unknown = get_args_parser().parse_known_args(argv)
    problems, taken = [], set()
    for position, arg in enumerate(argv):
        if arg not in unknown:
            continue
        name, _, value = arg.lstrip("-").partition("=")
        following = argv[position + 1] if position + 1 < len(argv) else None
        if not value and following is not None and "=" not in following and not following.startswith("-"):
            value = following
            taken.add(following)
        key = name.replace("-", "_")
        key = key if key in known_names() else closest(key)
        shown = f"{arg} {value}" if value and arg.partition("=")[2] != value else arg
        meant = f"{key}={value or 'VALUE'}" if key else None
        problems.append(f"{shown}: qvedit takes key=value overrides, not --options: "
                        f"{f'pass {meant}' if meant else 'python -m qvedit --help lists the keys'}")
    if problems:
        return problems
    before = None
    for arg in args.overrides:
        if "=" not in arg and not arg.startswith("~") and arg not in taken:
            hint = (f"if it is the rest of a value with a space, quote the whole override: '{before} {arg}'"
                    if before else "python -m qvedit --help lists the keys")
            return [f"{arg} is not key=value (every override is key=value): {hint}"]
        before = arg
    return []


def unknown_overrides(argv: list[str]) -> list[str]:
    """One message per command-line override that names no key or group of qvedit's schema."""
    overrides = parsed_overrides(argv)
    known = set(known_names())
    # keys holding a list or a dict (model.loras, model.scheduler): the keys below them are theirs to judge
    below = tuple(f"{key}." for key, f in schema_fields().items() if f.default_factory is not dataclasses.MISSING)
    return [unknown_key_message(o.key_or_group, o.input_line) for o in overrides
            if o.key_or_group.split(".")[0].split("/")[0] != "hydra" and o.key_or_group not in known
            and not o.key_or_group.startswith(below)] + [problem for o in overrides for problem in entry_keys(o)]


def entry_keys(override) -> list[str]:
    """A misspelt key inside a list entry (``model.loras=[{path:a.safetensors,scal:1}]``,
    ``model.loras.0.scal=1``), with the closest key an entry takes."""
    key, value = override.key_or_group, override.value()
    for name, schema in LIST_ENTRIES.items():
        fields = [f.name for f in dataclasses.fields(schema)]
        if key == name and isinstance(value, list):
            typed = [(f"{name}[{i}].{k}", k) for i, entry in enumerate(value) if isinstance(entry, dict) for k in entry]
        elif key.startswith(f"{name}.") and key.count(".") == name.count(".") + 2:
            typed = [(key, key.rsplit(".", 1)[1])]
        else:
            continue
        for where, typo in typed:
            if typo not in fields:
                guess = difflib.get_close_matches(typo, fields, n=1)
                return [f"unknown key {where} ({override.input_line}): {f'did you mean {guess[0]}? ' if guess else ''}"
                        f"an entry of {name} takes {', '.join(fields)}"]
    return []


def dict_keys() -> list[str]:
    """Keys whose value is a mapping of their own (``model.scheduler``)."""
    return [key for key, f in schema_fields().items() if str(f.type).startswith(("Dict", "dict"))]


def merging_dict_overrides(argv: list[str]) -> list[str]:
    """``argv`` with ``model.scheduler={shift:3.0}`` given as ``++model.scheduler={shift:3.0}``: Hydra refuses to
    set a key a mapping does not hold yet without ``+`` (its struct mode), while a user means "these values";
    with ``++`` the given values are merged over the mapping the config already has."""
    keys = tuple(f"{key}=" for key in dict_keys())
    return [f"++{arg}" if arg.startswith(keys) else arg for arg in argv]


def unknown_config_keys(cfg: DictConfig) -> list[str]:
    """Keys of a composed config that its schema does not have (added with ``+``), one message each."""
    messages = []
    for key, schema in _extra_keys(cfg):
        group, _, leaf = key.rpartition(".")
        if key in schema_fields():  # a key of another option of the same group (io.rgb_video with io=frames)
            own = ", ".join(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
            messages.append(f"{key} is not a key of the {group} option in use ({schema.__name__.removesuffix('Schema')}"
                            f": {own}); it belongs to another {group} option, chosen with {group}=...")
        else:
            messages.append(unknown_key_message(key, "added with +" if not group else f"added to {group} with +"))
    return messages


def _extra_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, type]]:
    """(key, schema of its node) for every key of ``node`` its schema lacks."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []  # a run folder's plain YAML: nothing to check against
    fields = {f.name for f in dataclasses.fields(schema)}
    extra = []
    for key in node:
        if key not in fields:
            extra.append((f"{prefix}{key}", schema))
        elif OmegaConf.is_dict(node._get_node(key)) and not OmegaConf.is_missing(node, key):
            extra += _extra_keys(node[key], f"{prefix}{key}.")
    return extra


# -- python -m qvedit --help ------------------------------------------------------------------------

def help_groups() -> str:
    """The ``group: options`` lines of ``--help``; the default option first."""
    defaults = {"hydra/launcher": "basic", **default_options()}
    lines = []
    for group, options in config_groups().items():
        if group == "hydra/launcher":
            options = ["basic", *options]
        first = defaults.get(group, "default" if "default" in options else None)
        ordered = ([f"{first} (default)"] if first in options else []) + [o for o in options if o != first]
        lines.append(f"  {group + ':':<16}{', '.join(ordered)}")
    return "\n".join(lines)


def help_key_line(key: str, meaning: str) -> str:
    """One ``key=default  meaning`` line of ``--help``, the default read from the schema
    (``${qvedit.key:seed,'frame i is seeded from (seed, i)'}``)."""
    fields = schema_fields()
    if key not in fields:
        raise KeyError(f"--help names {key}, which the schema does not have")
    default = fields[key].default
    shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
    return f"{key}={shown}".ljust(41) + " " + meaning


def register_help() -> None:
    """The resolvers ``conf/hydra/help/qvedit.yaml`` uses to list the groups and keys."""
    OmegaConf.register_new_resolver("qvedit.help_groups", help_groups, replace=True)
    OmegaConf.register_new_resolver("qvedit.key", help_key_line, replace=True)
