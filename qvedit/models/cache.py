"""The models a process loads once and keeps: the pipeline, VGG16, LPIPS, CLIP, the tiny guidance decoder.

Loading a model takes seconds to minutes, and a multirun sweep runs its jobs in one process: each model is
built on first use and every later job gets the same object. A key starts with the kind of model
(``("pipeline", ...)``, ``("vgg", ...)``); ``release(kind)`` lets go of every model of a kind, for a loader
that keeps one at a time (a new pipeline frees the previous one before it loads).
"""

from __future__ import annotations

from typing import Callable, TypeVar

Model = TypeVar("Model")

_held: dict[tuple, object] = {}  # (kind, ...) -> the model (or None: a model that could not be had, said once)


def shared(key: tuple, build: Callable[[], Model]) -> Model:
    """The model ``key`` names, built by ``build()`` the first time it is asked for in this process."""
    if key not in _held:
        _held[key] = build()
    return _held[key]


def held(kind: str) -> list:
    """The models of ``kind`` this process holds now, oldest first."""
    return [model for key, model in _held.items() if key[0] == kind]


def release(kind: str) -> bool:
    """Let go of every model of ``kind``; returns whether there was one."""
    keys = [key for key in _held if key[0] == kind]
    for key in keys:
        del _held[key]
    return bool(keys)


def clear() -> None:
    """Let go of every model (tests, and a process that is done with them)."""
    _held.clear()
