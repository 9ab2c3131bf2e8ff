"""perf.cache: diffusers' step caches on the tiny model (qvedit/models/step_cache.py): which steps run in full,
fresh state for every frame, how a guided step reaches the cache, and the combinations with compile,
Lightning's one pass and the settings that cannot work together."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.guidance import losses
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.guide import Guide
from qvedit.models.diffusers_compat import condition_area, record_velocity
from qvedit.models.perf import check_perf, compile_blocks
from qvedit.models.step_cache import check_cache, fresh_steps, use_step_cache
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.model import PerfSettings

SIZE = (48, 64)
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8))


def call(pipe, steps=8, cfg=4.0, callback=None, seed=0):
    image = Image.new("RGB", (SIZE[1], SIZE[0]), (120, 60, 30))
    with condition_area(SIZE[0] * SIZE[1]):
        return pipe(image=[image, NOISE], prompt="p",
                    negative_prompt=" ", true_cfg_scale=cfg, num_inference_steps=steps, height=SIZE[0], width=SIZE[1],
                    output_type="pt", generator=torch.Generator().manual_seed(seed),
                    callback_on_step_end=callback).images


def steps_in_full(pipe, steps, cfg):
    """{step: how many passes ran the last block (its attention: a skipped block runs none of it)} for one call."""
    runs, done = [], {}
    handle = pipe.transformer.transformer_blocks[-1].attn.register_forward_hook(lambda *args: runs.append(1))

    def count(pipe, i, t, kwargs):
        done[i] = len(runs) - sum(done.values())
        return {}

    try:
        call(pipe, steps, cfg, count)
    finally:
        handle.remove()
    return done


@pytest.fixture
def cached(tiny_pipe):
    """The tiny pipeline; whatever cache a test gives it is removed afterwards."""
    yield tiny_pipe
    use_step_cache(tiny_pipe.transformer, PerfSettings())


@pytest.mark.parametrize("settings, steps, cfg", [
    (PerfSettings(cache="taylorseer"), 12, 4.0),  # diffusers' defaults: steps 0, 1, 2, 4, 9 in full
    (PerfSettings(cache="taylorseer", cache_interval=2, cache_start_step=1, cache_stop_step=6), 8, 4.0),
    (PerfSettings(cache="taylorseer", cache_interval=3, cache_order=2), 8, 1.0),  # Lightning: one pass a step
])
def test_the_steps_in_full_are_the_documented_schedule(cached, settings, steps, cfg):
    use_step_cache(cached.transformer, settings)
    passes = 2 if cfg > 1 else 1
    expected = fresh_steps(settings, steps)
    assert steps_in_full(cached, steps, cfg) == {i: passes * (i in expected) for i in range(steps)}
    assert len(expected) < steps
    assert fresh_steps(settings, 12) == [0, 1, 2, 4, 9] or settings.cache_interval != 5


def test_a_cache_changes_the_frame_a_little_and_none_gives_the_uncached_frame_back(cached):
    plain = call(cached, steps=6)
    use_step_cache(cached.transformer, PerfSettings(cache="taylorseer", cache_start_step=2))
    approximate = call(cached, steps=6)
    assert 0 < (approximate - plain).abs().max() * 255 < 30
    use_step_cache(cached.transformer, PerfSettings(cache="first_block", cache_threshold=0.0))  # never skips a block
    assert torch.equal(call(cached, steps=6), plain)
    use_step_cache(cached.transformer, PerfSettings())
    assert not cached.transformer.is_cache_enabled and torch.equal(call(cached, steps=6), plain)


def test_every_frame_starts_from_fresh_state(cached):
    """The pipeline resets the cache at the end of each call, and qvedit at every job: a call that failed
    half-way leaves no state behind for the next job."""
    settings = PerfSettings(cache="taylorseer", cache_interval=2)
    use_step_cache(cached.transformer, settings)
    first, second = call(cached), call(cached)
    assert torch.equal(first, second)

    def fail(pipe, i, t, kwargs):
        if i == 5:
            raise RuntimeError("stopped half-way")
        return {}

    with pytest.raises(RuntimeError):
        call(cached, callback=fail)
    use_step_cache(cached.transformer, settings)  # the next job's apply_perf
    assert torch.equal(call(cached), first)


def test_a_guided_step_reaches_the_next_transformer_call_and_still_lowers_the_edge_loss(cached):
    """On steps in full and extrapolated ones alike, the transformer's next input is the guided latents; with
    the cache on, guidance still lowers the edge loss of the frame."""
    use_step_cache(cached.transformer, PerfSettings(cache="taylorseer", cache_interval=3))
    target = image_to_edge_target(NOISE.convert("L"))
    guide = Guide(TTLGSettings(edge_scale=1.0, lr=0.2, last_steps=None), cached, torch.rand(1, 3, *SIZE))
    handed, seen = [], []
    forward = cached.transformer.forward

    def watched(hidden_states, *args, **kwargs):
        seen.append(hidden_states[:, : handed[-1].shape[1]].clone() if handed else None)
        return forward(hidden_states, *args, **kwargs)

    cached.transformer.forward = watched
    try:
        with record_velocity(cached.scheduler) as velocity:
            callback = guide.callback(1, target, *SIZE, 8, velocity)

            def guided(pipe, i, t, kwargs):
                out = callback(pipe, i, t, kwargs)
                handed.append(out["latents"])
                return out

            on = call(cached, callback=guided)
    finally:
        del cached.transformer.forward
    after_guidance = seen[2::2]  # two passes a step: the first pass of steps 1..7
    assert len(after_guidance) == 7 and all(torch.equal(a, b) for a, b in zip(after_guidance, handed))
    off = call(cached)
    assert losses.edge_loss(on, target) < 0.95 * losses.edge_loss(off, target)


@pytest.mark.long
def test_compiled_blocks_take_the_cache_around_them_without_compiling_again(tiny_pipe):
    """perf.compile with perf.cache: the hooks wrap the compiled forward of each block, so switching the cache
    on and off compiles nothing new, and the frames are those of the eager pipeline (to rounding)."""
    from diffusers import QwenImageEditPlusPipeline
    from torch._dynamo.utils import counters

    pipe = QwenImageEditPlusPipeline(**{**tiny_pipe.components, "transformer": copy.deepcopy(tiny_pipe.transformer)})
    pipe.set_progress_bar_config(disable=True)
    cache = PerfSettings(cache="taylorseer", cache_start_step=1, cache_interval=2)
    eager = {}
    for settings in (PerfSettings(), cache):
        use_step_cache(pipe.transformer, settings)
        eager[settings.cache] = call(pipe, steps=4, cfg=1.0)
    use_step_cache(pipe.transformer, PerfSettings())
    torch._dynamo.reset()
    compile_blocks(pipe.transformer)
    compiled = {}
    for settings in (cache, PerfSettings()):
        use_step_cache(pipe.transformer, settings)
        compiled[settings.cache] = call(pipe, steps=4, cfg=1.0)
        graphs = counters["stats"]["unique_graphs"]
        if settings is cache:
            first = graphs
    assert graphs == first  # the second setting compiled nothing
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=2e-4, rtol=0)


def test_settings_that_cannot_work_are_one_line():
    assert "perf.cache does not combine with parallel" in PerfSettings(cache="first_block").conflict(processes=2)
    assert PerfSettings(cache="taylorseer").conflict(processes=1) is None
    with pytest.raises(QveditError, match="perf.cache does not combine with perf.group_offload"):
        check_perf(PerfSettings(cache="taylorseer", group_offload=True), "cuda", "bf16")
    check_cache(PerfSettings(cache="taylorseer", cache_stop_step=40))  # diffusers takes it
