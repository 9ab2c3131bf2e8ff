"""What a run reads from its composed config key by key, at the top (``job_settings`` and the job): every value held
to its field's range and choices (``check_values``), the values that decide the frames (``frame_settings``, the
resume manifest) and the files a user's input is read from (``input_paths``). Which keys these are is the schema's
(``qvedit.settings.schema``, from the fields' tags); reading them from a ``DictConfig`` happens here, so the config
itself goes no lower than ``run/``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from qvedit.core.errors import QveditError
from qvedit.settings.field_tags import value_problem
from qvedit.settings.schema import schema_fields, schema_keys

_ABSENT = object()


def check_values(cfg: DictConfig) -> None:
    """Hold every key of ``cfg`` to its field's range and choices (``setting(min=, max=, choices=)``),
    before anything is built or loaded: all the problems in one line, each with what the key takes."""
    problems = []
    for key, f in schema_fields().items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            problems.append(value_problem(key, value, f))
    if any(problems):
        raise QveditError("; ".join(p for p in problems if p))


def frame_settings(cfg: DictConfig) -> dict[str, object]:
    """The resolved values of the keys tagged ``frames=True`` that ``cfg`` holds, flat.

    Read by key, so a config re-run from a run folder's ``.hydra/config.yaml`` (no schema attached)
    gives the same values as the composed one.
    """
    values = {}
    for key in schema_keys(lambda tags: tags.frames):
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            values[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (ListConfig, DictConfig)) \
                else value
    return values


def input_paths(cfg: DictConfig) -> list[tuple[str, Path]]:
    """(key, path) of every file or folder on this machine that ``cfg`` reads a user's input from: the values of
    the keys tagged ``path="input"`` (each LoRA entry's ``path`` for ``model.loras``) that exist here. Hub ids and
    paths that do not exist are left out (the checks of each key say what is missing)."""
    found = []
    for key in schema_keys(lambda tags: tags.path == "input"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (ListConfig, list)):  # model.loras: [{path, weight_name, scale}, ...]
            values = [(f"{key}[{i}].path", entry.get("path")) for i, entry in enumerate(value)
                      if isinstance(entry, (DictConfig, dict))]
        else:
            values = [(key, value)]
        for name, path in values:
            if isinstance(path, str) and path.strip() and Path(path).expanduser().exists():
                found.append((name, Path(path).expanduser()))
    return found
