"""Settings are dataclass fields; a field's tags say what its key means to the rest of qvedit.

Each config key is defined once, as a field of the dataclass its module owns (``TTLGSettings``,
``FramesIO`` ...). ``setting(default, frames=..., path=...)`` tags the field, and every list of keys
that qvedit needs is derived from the tags, never typed:

- ``frames=True``: the value changes the frames. The resume manifest records these keys, and a run
  may only add frames to a folder made with the same values.
- ``path="input"`` / ``path="output"``: the value is a file or folder. Paths are left out of sweep
  folder names; output paths are also ignored when the acceptance report pairs guided and
  unguided jobs (where a job writes does not change what it computes).
- ``min=`` / ``max=`` (numbers, both ends included) and ``choices=`` (the words a key takes; for a list
  key, the words each entry takes): the values a key accepts. ``qvedit.run.config_values.check_values``
  holds a composed config to them before anything is built or loaded, the one place values are checked;
  a numeric key must state its range and a key of words its choices (``tests/test_config.py``).
- ``help=``: what the key means, in a sentence or two of Markdown. ``docs/configuration.md`` is generated from
  these (``python -m qvedit.settings.reference``); every key has one (``tests/test_config.py``).
- ``flag=``: the command-line flag of the original design (docs/METHOD.md, section 6) the key replaces.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

TAGS = "qvedit"


@dataclass(frozen=True)
class Tags:
    frames: bool = False
    path: Optional[str] = None  # None | "input" | "output"
    min: Optional[float] = None
    max: Optional[float] = None
    choices: tuple = ()
    help: str = ""
    flag: Optional[str] = None

    @property
    def ranged(self) -> bool:
        return self.min is not None or self.max is not None


def setting(default: Any = dataclasses.MISSING, *, frames: bool = False, path: Optional[str] = None,
            min: Optional[float] = None, max: Optional[float] = None, choices: tuple = (),
            default_factory: Any = dataclasses.MISSING, help: str = "", flag: Optional[str] = None) -> Any:
    """A dataclass field with qvedit's tags (see the module docstring)."""
    if path not in (None, "input", "output"):
        raise ValueError(f"path={path!r}: use None, 'input' or 'output'")
    tags = Tags(frames=frames, path=path, min=min, max=max, choices=tuple(choices), help=help, flag=flag)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={TAGS: tags})


def tags_of(field: dataclasses.Field) -> Tags:
    return field.metadata.get(TAGS, Tags())


def optional(field: dataclasses.Field) -> bool:
    """Whether the key may be null: an ``Optional[...]`` field, or one whose default is None."""
    return str(field.type).startswith("Optional") or field.default is None


def integral(field: dataclasses.Field) -> bool:
    """Whether a ranged field counts something (an int, or ``Any`` holding an int such as condition_area)."""
    kind = str(field.type)
    return "int" in kind or (kind == "Any" and isinstance(field.default, int) and not isinstance(field.default, bool))


def accepted(field: dataclasses.Field) -> str:
    """What a key takes, in words: ``an integer >= 1``, ``a number from 0 to 1``, ``bf16, fp16 or fp32``."""
    tags = tags_of(field)
    others = [*tags.choices] + (["null"] if optional(field) else [])
    if not tags.ranged:
        return ", ".join(others[:-1]) + f" or {others[-1]}" if len(others) > 1 else others[0]
    integer = integral(field)
    low, high = (None if v is None else int(v) if integer else v for v in (tags.min, tags.max))
    span = f"from {low} to {high}" if None not in (low, high) else f">= {low}" if low is not None else f"<= {high}"
    return f"{'an integer' if integer else 'a number'} {span}" + (f", or {' or '.join(others)}" if others else "")


def value_problem(key: str, value: Any, field: dataclasses.Field) -> Optional[str]:
    """Why ``value`` is not one the field ``key`` takes, saying what it takes; None when it is fine."""
    tags = tags_of(field)
    if tags.path and isinstance(value, str):
        return path_problem(key, value)
    if not (tags.ranged or tags.choices):
        return None
    if tags.choices and isinstance(value, Sequence) and not isinstance(value, str):  # a list key: each entry
        unknown = [entry for entry in value if entry not in tags.choices]
        return f"{key} names {unknown}: use {', '.join(tags.choices)}" if unknown else None
    if value is None:
        return None if optional(field) else f"{key} is null: set it to {accepted(field)}"
    if isinstance(value, str) and value in tags.choices:
        return None
    if not tags.ranged or isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}={value!r} is not valid: use {accepted(field)}"
    if not math.isfinite(value):
        return f"{key}={value} is not a finite number: use {accepted(field)}"
    if integral(field) and not float(value).is_integer():
        return f"{key}={value} is not a whole number: use {accepted(field)}"
    if (tags.min is not None and value < tags.min) or (tags.max is not None and value > tags.max):
        return f"{key}={value} is out of range: use {accepted(field)}"
    return None


NAME_MAX, PATH_MAX = 255, 4096  # bytes: what Linux file systems take for one name and for a whole path


def path_problem(key: str, value: str) -> Optional[str]:
    """A path no file system takes (a name over 255 bytes, or a path over 4096), said before anything is written."""
    if len(os.fsencode(value)) >= PATH_MAX:
        return f"{key} is a path of {len(os.fsencode(value))} bytes: at most {PATH_MAX - 1} are taken"
    longest = max(value.replace("\\", "/").split("/"), key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > NAME_MAX:
        return (f"{key}={value[:60]}...: the name {longest[:20]}... is {len(os.fsencode(longest))} bytes, longer than "
                f"the {NAME_MAX} a file system takes for one name")
    return None


def nested_schemas(cls: type) -> dict[str, type]:
    """{field name: dataclass type} for the fields of ``cls`` that are dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every leaf field of the dataclass ``cls``, nested dataclasses included."""
    nested = nested_schemas(cls)
    for field in dataclasses.fields(cls):
        if field.name in nested:
            yield from walk(nested[field.name], f"{prefix}{field.name}.")
        elif not field.name.startswith("_"):
            yield f"{prefix}{field.name}", field


def keys_where(cls: type, wanted: Callable[[Tags], bool], prefix: str = "") -> list[str]:
    return [key for key, field in walk(cls, prefix) if wanted(tags_of(field))]
