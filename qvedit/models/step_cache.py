"""``perf.cache`` at work: diffusers' own step caches (``diffusers.hooks``) on the transformer.

- ``taylorseer``: ``TaylorSeerCacheConfig`` in diffusers' lite mode. On a step in full every block runs and
  the transformer's output (``proj_out``) is recorded; on the steps between, every block returns at once and
  the output is extrapolated from the last steps in full with a Taylor series of order ``perf.cache_order``.
  Which steps run in full is a fixed schedule, the same whatever the weights: steps ``0 .. start-1``, then
  ``start + 1 + k * interval``, and every step from ``perf.cache_stop_step`` on (``fresh_steps``). Memory:
  one output per order and CFG pass (1.5 MiB at 1024²), where the full TaylorSeer keeps every attention output
  of every block.
- ``first_block``: ``FirstBlockCacheConfig``. The first block always runs; when its output moved by less than
  ``perf.cache_threshold`` (relative mean change) since the last step in full, the other blocks are skipped and
  their last contribution is added again. Which steps run depends on the weights, so its speed on random
  weights means nothing.

The two CFG passes keep separate state (the pipeline runs them inside ``cache_context("cond")`` and
``("uncond")``). State is reset before every frame is made (``use_step_cache``, and the pipeline itself at
the end of every call), so each frame starts from steps in full.

With guidance the callback replaces the latents after the scheduler's step; the next step's transformer call
takes them as its input. A step in full therefore computes on the guided latents and its output is what the
extrapolation builds on; an extrapolated step does not see the latents at all (its velocity is the
extrapolation), but the scheduler adds it to the guided latents, so a guidance step is never lost, only not
reacted to until the next step in full. The first block cache compares the first block's output, which a
guided change of the latents moves: it reads as a change, so the step is more likely computed in full.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from qvedit.core.errors import QveditError
from qvedit.models.diffusers_compat.hooks import restore_hook_state
from qvedit.models.modifications import modifications_of
from qvedit.settings.model import PerfSettings

log = logging.getLogger(__name__)

STEP_CACHE = "step_cache"  # the modification's name (qvedit.models.modifications)


def cache_config(settings: PerfSettings):
    """The diffusers config ``perf.cache`` names, or None for ``none``."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if settings.cache == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=settings.cache_interval,
                                     disable_cache_before_step=settings.cache_start_step,
                                     disable_cache_after_step=settings.cache_stop_step, max_order=settings.cache_order,
                                     taylor_factors_dtype=torch.float32, use_lite_mode=True)
    if settings.cache == "first_block":
        return FirstBlockCacheConfig(threshold=settings.cache_threshold)
    return None


def check_cache(settings: PerfSettings) -> None:
    """Before the model loads: diffusers takes these cache settings."""
    try:
        cache_config(settings)
    except (TypeError, ValueError) as err:
        raise QveditError(f"perf.cache={settings.cache}: diffusers refuses these settings "
                          f"({' '.join(str(err).split())})") from None


def fresh_steps(settings: PerfSettings, num_steps: int) -> Optional[list[int]]:
    """The steps (0-based, of ``num_steps``) each CFG pass computes in full under ``perf.cache`` (the schedule of
    diffusers' ``TaylorSeerCacheHook``); None for ``first_block``, whose steps depend on the weights."""
    if settings.cache == "none":
        return list(range(num_steps))
    if settings.cache != "taylorseer":
        return None
    start, stop, interval = settings.cache_start_step, settings.cache_stop_step, settings.cache_interval
    return [i for i in range(num_steps)
            if i < start or (i - start - 1) % interval == 0 or (stop is not None and i >= stop)]


def use_step_cache(transformer, settings: PerfSettings) -> None:
    """Give ``transformer`` exactly the cache ``settings`` asks for (none: no cache hooks), with fresh state.

    The cache is the modification ``step_cache`` of the transformer (``qvedit.models.modifications``; its detail is the
    diffusers config). A cache of other settings is removed first, so the jobs of a sweep can each have their own.
    The hooks wrap each block's ``forward`` as it is now: with ``perf.compile`` they wrap the compiled ``forward`` and
    run in eager Python themselves (``qvedit.models.perf.compile_blocks``).
    """
    from diffusers.hooks import HookRegistry

    wanted = cache_config(settings)
    key = repr(wanted)
    applied = modifications_of(transformer).get(STEP_CACHE)
    if (applied.detail if applied is not None else repr(None)) != key:
        without_step_cache(transformer)
        if wanted is not None:
            modifications_of(transformer).apply(STEP_CACHE, lambda change: _enable(change, transformer, wanted),
                                                detail=key)
            log.info("perf.cache: %s", key)
    HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()


def _enable(change, transformer, config) -> None:
    restore_hook_state(change, transformer)
    transformer.enable_cache(config)
    change.on_undo(transformer.disable_cache)


def without_step_cache(transformer) -> None:
    """Remove the step cache from ``transformer`` (before its blocks are compiled; before another cache)."""
    if not modifications_of(transformer).remove(STEP_CACHE) and transformer.is_cache_enabled:
        transformer.disable_cache()  # a cache qvedit did not set up
