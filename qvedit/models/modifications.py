"""Every change qvedit makes to a loaded pipeline, one of its components or a diffusers module, by name, with its undo.

qvedit adapts the diffusers pipeline at run time (a step cache, compiled blocks, a wrapped ``encode_prompt``, the
condition area of one call ...). Each such change is a ``Modification``: it is applied through the ``Modifications``
registry of the object it changes (``modifications_of(owner)``), records as it goes how to undo each thing it did,
and is undone by name (``remove``), last thing first, back to exactly what was there. ``applied(...)`` does the same
for the length of a ``with`` block, also when the block raises. The registry says what is applied
(``describe``, ``applied_to(pipe)`` for a pipeline, its components and its diffusers module), for errors and logs.

Decisions:

- a name is applied at most once per owner: applying it again is refused (``ModificationError``, naming what is
  applied); a caller that means "make sure it is on" asks ``name in registry`` first;
- an ``apply`` that raises part way undoes what it had done and registers nothing;
- ``permanent`` modifications (weights quantized or fused, weights streamed from CPU memory) are listed but refuse
  ``remove``: the loader's cache key holds them, and a pipeline without them is loaded afresh;
- the registries are kept here, keyed weakly by the object they change: nothing is stored on the pipeline.

Modifications made with diffusers' hooks (``diffusers.hooks.HookRegistry``) use
``qvedit.models.diffusers_compat.hooks``, which restores the module's ``forward`` and hook registry as they were.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator, Optional


class ModificationError(RuntimeError):
    """A modification applied twice, or one that cannot be undone asked to be."""


class Modification:
    """One named change of an object (or of several: a pipeline's components): what it did, as undo steps.

    ``make(change)`` (``Modifications.apply``) does the work through ``set`` and records other undo steps with
    ``on_undo``; ``undo`` runs them last-first.
    """

    def __init__(self, name: str, detail: str = "", permanent: bool = False):
        self.name, self.detail, self.permanent = name, detail, permanent
        self._undo: list[Callable[[], None]] = []

    def set(self, owner: Any, attribute: str, value: Any) -> None:
        """``owner.attribute = value``; undone, ``owner``'s own attribute is what it was before, or absent again (a
        method comes from the class again). For plain attributes: not a module's submodules or parameters."""
        own = vars(owner)
        had, old = attribute in own, own.get(attribute)
        setattr(owner, attribute, value)
        self.on_undo(lambda: setattr(owner, attribute, old) if had else delattr(owner, attribute))

    def on_undo(self, step: Callable[[], None]) -> None:
        """Run ``step()`` on undo, before the steps recorded earlier."""
        self._undo.append(step)

    def undo(self) -> None:
        """Run every undo step, last recorded first; each runs even when one before it raised (the first error is
        raised at the end)."""
        failed: Optional[BaseException] = None
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as err:
                failed = failed or err
        if failed is not None:
            raise failed

    def __repr__(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


class Modifications:
    """The modifications applied to one object, in the order they were applied."""

    def __init__(self, label: str):
        self.label = label
        self._applied: dict[str, Modification] = {}

    def apply(self, name: str, make: Callable[[Modification], Any], detail: str = "", permanent: bool = False) -> Any:
        """Apply the modification ``name``: ``make(change)`` does it (recording its undo in ``change``) and returns
        what the caller gets back. Refused when ``name`` is applied already; a ``make`` that raises is undone."""
        if name in self._applied:
            raise ModificationError(f"{name} is already applied to {self.label} (applied: {self.describe()}): "
                                    "remove it first")
        change = Modification(name, detail, permanent)
        try:
            result = make(change)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped make is the one to see
                change.undo()
            raise
        self._applied[name] = change
        return result

    def remove(self, name: str) -> bool:
        """Undo the modification ``name``; returns whether it was applied. It leaves the registry even when an undo
        step raises (the error is raised after every step ran)."""
        change = self._applied.get(name)
        if change is None:
            return False
        if change.permanent:
            raise ModificationError(f"{change!r} cannot be undone on {self.label}: it changed the weights or where "
                                    "they live for good; load the pipeline again")
        del self._applied[name]
        change.undo()
        return True

    @contextlib.contextmanager
    def applied(self, name: str, make: Callable[[Modification], Any], detail: str = "") -> Iterator[Any]:
        """``apply`` for the length of the block, removed after it, also when it raises."""
        result = self.apply(name, make, detail)
        try:
            yield result
        finally:
            self.remove(name)

    def get(self, name: str) -> Optional[Modification]:
        return self._applied.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._applied

    def names(self) -> list[str]:
        """The applied modifications' names, oldest first."""
        return list(self._applied)

    def describe(self) -> str:
        """``name (detail), ...`` of what is applied, oldest first; ``nothing`` when none is."""
        return ", ".join(map(repr, self._applied.values())) or "nothing"


_registries: "weakref.WeakKeyDictionary[Any, Modifications]" = weakref.WeakKeyDictionary()


def modifications_of(owner: Any) -> Modifications:
    """The registry of what is applied to ``owner`` (a pipeline, a component, a Python module), made on first use and
    let go of with ``owner``."""
    registry = _registries.get(owner)
    if registry is None:
        label = getattr(owner, "__name__", None) or type(owner).__name__
        registry = _registries[owner] = Modifications(label)
    return registry


def applied_to(pipe: Any) -> list[str]:
    """What is applied to ``pipe``, to each of its components (``pipe.components``) and to the module that defines its
    class, as ``owner: name (detail)``, oldest first per owner."""
    import sys

    owners = [("pipeline", pipe), *getattr(pipe, "components", {}).items(),
              (type(pipe).__module__, sys.modules.get(type(pipe).__module__))]
    return [f"{label}: {change!r}" for label, owner in owners for change in _changes(owner)]


def _changes(owner: Any) -> list[Modification]:
    try:
        registry = _registries.get(owner)
    except TypeError:  # not weakly referable or not hashable: nothing of it is registered
        return []
    return list(registry._applied.values()) if registry is not None else []
