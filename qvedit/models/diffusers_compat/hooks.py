"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds the check, "hook removal"): modifications
(``qvedit.models.modifications``) made with diffusers' hooks, undone to exactly what the modules held before.

diffusers' ``HookRegistry`` lives on a module as ``module._diffusers_hook`` and wraps ``module.forward`` as it finds it,
putting its own ``forward`` on the instance. Removing a hook puts the forward it wrapped back as an instance attribute
(where the class's method was all along) and leaves the emptied registry on the module; ``disable_cache`` leaves
``_cache_config = None`` on the instance. ``restore_hook_state`` records how every module under a root held these
attributes, and puts that back on undo. Modifications on one module are undone last applied first; undoing one
while a later one's hooks still wrap the same forward would unwrap both.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from qvedit.models.diffusers_compat.fragments import missing_fragment
from qvedit.models.modifications import Modification

HOOK_ATTRIBUTES = ("forward", "_diffusers_hook", "_cache_config")  # what diffusers' hooks leave on a module instance


def restore_hook_state(change: Modification, root: torch.nn.Module, recurse: bool = True) -> None:
    """Make ``change``'s undo end by putting back the ``HOOK_ATTRIBUTES`` of ``root`` and (``recurse``) every module
    under it as they are now (call it before ``change`` adds hooks: its undo steps run last-first)."""
    before = [(module, {name: vars(module)[name] for name in HOOK_ATTRIBUTES if name in vars(module)})
              for module in (root.modules() if recurse else [root])]

    def restore() -> None:
        for module, own in before:
            state = vars(module)
            for name in HOOK_ATTRIBUTES:
                if name in own:
                    state[name] = own[name]
                else:
                    state.pop(name, None)
        for module in root.modules():  # registries that list child registries list them afresh
            registry = vars(module).get("_diffusers_hook")
            if registry is not None:
                registry._child_registries_cache = None

    change.on_undo(restore)


def add_model_hook(change: Modification, module: torch.nn.Module, hook, name: str) -> None:
    """Register ``hook`` (a ``diffusers.hooks.ModelHook``) as ``name`` on ``module`` through its ``HookRegistry``, as
    part of ``change``: undone, the hook is removed and ``module`` is as it was."""
    from diffusers.hooks import HookRegistry

    restore_hook_state(change, module, recurse=False)  # the hook is on ``module`` alone; its children keep theirs
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)
    change.on_undo(lambda: registry.remove_hook(name, recurse=False))


def before_forward(call: Callable[[torch.nn.Module], None]):
    """A ``ModelHook`` that calls ``call(module)`` before each forward of the module it is registered on."""
    from diffusers.hooks import ModelHook

    class BeforeForward(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            call(module)
            return args, kwargs

        def __repr__(self) -> str:
            return f"BeforeForward({getattr(call, '__qualname__', call)})"

    return BeforeForward()


def check_hook_removal() -> Optional[str]:
    """None while ``HookRegistry`` keeps itself in ``_diffusers_hook``, puts its forward on the instance and puts the
    wrapped one back on removal, caching child registries in ``_child_registries_cache``; and while ``CacheMixin``
    keeps its config in ``_cache_config``."""
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.models.cache_utils import CacheMixin

    wanted = ((HookRegistry.check_if_exists_or_initialize, ("module._diffusers_hook = cls(module)",)),
              (HookRegistry.register_hook, ("forward = self._module_ref.forward", "self._module_ref.forward = ")),
              (HookRegistry.remove_hook, ("self._module_ref.forward = old_forward",)),
              (HookRegistry._get_child_registries, ("self._child_registries_cache = registries",)),
              (CacheMixin.enable_cache, ("self._cache_config = config",)),
              (CacheMixin.disable_cache, ("self._cache_config = None",)),
              (ModelHook.__init__, ("self.fn_ref",)))
    for function, fragments in wanted:
        problem = missing_fragment(inspect.getsource(function), function.__qualname__, fragments)
        if problem:
            return problem
    return None
