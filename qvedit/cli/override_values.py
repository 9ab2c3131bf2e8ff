"""The values a command line gives, checked before Hydra composes: one line each, naming what the key takes.

Hydra refuses a misspelt option (``ttlg=edgegram``), a value of the wrong type (``num_inference_steps=abc``,
``model.loras=abc``) and a dict key its node lacks (``model.scheduler={bogus_key:1}``) with a message of
several lines that points at ``HYDRA_FULL_ERROR``. ``override_problems`` finds these first, with the
closest option for a misspelt one; ``hydra_error_line`` turns whatever Hydra still raises while it
composes into the same one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qvedit.cli.override_keys import config_groups, parsed_overrides
from qvedit.settings.field_tags import accepted, nested_schemas, optional, tags_of
from qvedit.settings.io import IO_OPTIONS
from qvedit.settings.schema import QveditConfig, schema_fields


def owners(key: str) -> list[type]:
    """The dataclasses that hold the leaf of the dotted ``key`` (every io option that has it)."""
    *path, leaf = key.split(".")
    classes = [QveditConfig]
    if path and path[0] == "io":
        classes, path = list(IO_OPTIONS), path[1:]
    for name in path:
        classes = [nested_schemas(cls)[name] for cls in classes if name in nested_schemas(cls)]
    return [cls for cls in classes if leaf in {f.name for f in dataclasses.fields(cls)}]


def takes(cls: type, leaf: str) -> str:
    """What the field ``leaf`` of ``cls`` takes, in words."""
    field = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    kind = typing.get_type_hints(cls)[leaf]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    kind = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
    origin = typing.get_origin(kind) or kind
    if origin is not list and (tags_of(field).ranged or tags_of(field).choices):
        return accepted(field)
    if origin is list:
        entry = (typing.get_args(kind) or (None,))[0]
        if dataclasses.is_dataclass(entry):
            names = [f.name for f in dataclasses.fields(entry)]
            words = (f"a list of entries such as [{{{names[0]}:...}}] (an entry takes {', '.join(names)})")
        else:
            words = "a list such as [a,b]"
    elif origin is dict:
        words = "a mapping such as {key:value}"
    else:
        words = {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(kind, "a value")
    return words + (", or null" if optional(field) else "")


def group_problem(group: str, value: Any) -> Optional[str]:
    options = config_groups()[group]
    if value is None or str(value) in options:
        return None
    guess = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
    hint = f"did you mean {guess[0]}? " if guess else ""
    return f"{group}={value} is not an option of {group}: {hint}{group} takes {', '.join(options)}"


def key_problem(key: str, value: Any, typed: str) -> Optional[str]:
    """Why ``value`` cannot be ``key``'s (its type, or a dict key its node cannot hold), or None."""
    if isinstance(value, str) and "${" in value:
        return None  # an interpolation: Hydra resolves it later
    holders = owners(key)
    leaf = key.rsplit(".", 1)[-1]
    for cls in holders:
        try:  # merged as Hydra merges an override: a list of dicts becomes a list of LoRA entries
            OmegaConf.merge(OmegaConf.structured(cls), {leaf: value})
        except OmegaConfBaseException:
            continue
        if key == "model.scheduler" and isinstance(value, dict):
            return scheduler_problem(value, typed)
        return None
    if not holders:
        return None
    return f"{typed} is not valid: {key} takes {takes(holders[0], leaf)}"


def scheduler_problem(value: dict, typed: str) -> Optional[str]:
    """``model.scheduler={...}``: a key the scheduler does not take is named with the closest one it does."""
    import inspect

    from diffusers import FlowMatchEulerDiscreteScheduler

    known = sorted(set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"})
    for name in value:
        if name not in known:
            guess = difflib.get_close_matches(str(name), known, n=1)
            return (f"{typed}: {name} is not a FlowMatchEulerDiscreteScheduler setting: "
                    f"{f'did you mean {guess[0]}? ' if guess else ''}model.scheduler takes {', '.join(known)}")
    return None


def swept_values(override) -> list:
    """The values of an override: one, or each of a choice or range sweep (other sweeps: none to check)."""
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except Exception:  # interval(...) and the like: the sweeper picks the values
        return []


def override_problems(argv: list[str]) -> list[str]:
    """One message per override whose value its group or key cannot take (hydra.* left to Hydra)."""
    overrides = parsed_overrides(argv)
    groups = config_groups()
    problems = []
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra"):
            continue
        for value in swept_values(override):
            typed = f"{key}={override.get_value_element_as_str() if not override.is_sweep_override() else value}"
            problem = group_problem(key, value) if key in groups else key_problem(key, value, typed)
            if problem:
                problems.append(problem)
                break
    return problems


def hydra_error_line(err: Exception) -> str:
    """What Hydra raised while composing (a group option missing, a value its node refuses, an override it
    cannot parse), as one line."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        if group in config_groups():
            return group_problem(group, option)
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and key:
        message = " ".join(str(getattr(cause, "msg", None) or cause).split("\n")[0].split())
        group, _, leaf = key.rpartition(".")
        if key in schema_fields() and "not in" in message:  # io.rgb_video with io=frames
            return (f"{key} is not a key of the {group} option in use: it belongs to another {group} option, chosen "
                    f"with {group}=...")
        if "not in struct" in message and "." in key:  # a key a dict node (model.scheduler) does not hold yet
            parent, _, leaf = key.rpartition(".")
            return (f"{parent} holds no key {leaf} to change: add it with + (+{key}=...) or ++ "
                    f"('++{parent}={{{leaf}:...}}')")
        return f"{key}: {message}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines[:3]) or type(err).__name__
