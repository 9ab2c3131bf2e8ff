"""Settings are dataclass fields; a field's tags say what its key means to the rest of qvedit.

Each config key is defined once, as a field of the dataclass its module owns (``TTLGSettings``,
``FramesIO`` ...). ``setting(default, frames=..., path=...)`` tags the field, and every list of keys
that qvedit needs is derived from the tags, never typed:

- ``frames=True``: the value changes the frames. The resume manifest records these keys, and a run
  may only add frames to a folder made with the same values.
- ``path="input"`` / ``path="output"``: the value is a file or folder. Paths are left out of sweep
  folder names; output paths are also ignored when the acceptance report pairs guided and
  unguided jobs (where a job writes does not change what it computes).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

TAGS = "qvedit"


@dataclass(frozen=True)
class Tags:
    frames: bool = False
    path: Optional[str] = None  # None | "input" | "output"


def setting(default: Any = dataclasses.MISSING, *, frames: bool = False, path: Optional[str] = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with qvedit's tags (see the module docstring)."""
    if path not in (None, "input", "output"):
        raise ValueError(f"path={path!r}: use None, 'input' or 'output'")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={TAGS: Tags(frames=frames, path=path)})


def tags_of(field: dataclasses.Field) -> Tags:
    return field.metadata.get(TAGS, Tags())


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
