"""Pipeline modifications (qvedit.models.modifications): applied by name, listed, refused twice, undone to exactly what was
there (the same attributes, the same forward outputs), also after an error."""

import pytest
import torch

from qvedit.models.diffusers_compat import condition_area, record_velocity
from qvedit.models.diffusers_compat.hooks import add_model_hook, before_forward
from qvedit.models.diffusers_compat.single_frame import use_single_frame_convolutions
from qvedit.models.lora import use_scheduler
from qvedit.models.modifications import ModificationError, Modifications, applied_to, modifications_of
from qvedit.models.perf import compile_blocks
from qvedit.models.step_cache import use_step_cache, without_step_cache
from qvedit.settings.model import PerfSettings


class Thing:
    def method(self):
        return "the class's"


def own_state(root: torch.nn.Module) -> dict:
    """{(module name, attribute): what the instance holds} for every module under ``root`` (dicts copied: a hook
    registered in one shows)."""
    return {(name, key): dict(value) if isinstance(value, dict) else value
            for name, module in root.named_modules() for key, value in vars(module).items()}


def assert_same_state(before: dict, after: dict):
    assert before.keys() == after.keys(), set(before.keys()) ^ set(after.keys())
    changed = [key for key in before if not (before[key] is after[key] or before[key] == after[key])]
    assert not changed, changed


# -- the registry -----------------------------------------------------------------------------------------------------

def test_undo_puts_back_what_the_instance_held_or_nothing():
    thing, registry = Thing(), Modifications("thing")
    thing.value = own = object()
    registry.apply("wrap", lambda change: (change.set(thing, "method", lambda: "wrapped"),
                                           change.set(thing, "value", 2)), detail="for a test")
    assert (thing.method(), thing.value) == ("wrapped", 2)
    assert "wrap" in registry and registry.describe() == "wrap (for a test)"
    assert registry.remove("wrap") and not registry.remove("wrap")
    assert "method" not in vars(thing) and thing.method() == "the class's" and thing.value is own
    assert registry.names() == [] and registry.describe() == "nothing"


def test_a_name_applied_twice_is_refused_naming_what_is_applied():
    registry = Modifications("transformer")
    registry.apply("compile", lambda change: None)
    with pytest.raises(ModificationError, match=r"compile is already applied to transformer \(applied: compile\)"):
        registry.apply("compile", lambda change: None)
    with pytest.raises(ModificationError, match="already applied"), registry.applied("compile", lambda change: None):
        pass
    assert registry.names() == ["compile"]


def test_an_apply_that_fails_part_way_is_undone_and_not_listed():
    thing, registry = Thing(), Modifications("thing")

    def fails(change):
        change.set(thing, "method", None)
        raise ValueError("half done")

    with pytest.raises(ValueError, match="half done"):
        registry.apply("broken", fails)
    assert "method" not in vars(thing) and "broken" not in registry


def test_a_block_that_raises_still_undoes_its_modification():
    thing, registry = Thing(), Modifications("thing")
    with pytest.raises(KeyError), registry.applied("scoped", lambda change: change.set(thing, "method", None)):
        assert thing.method is None and registry.names() == ["scoped"]
        raise KeyError("in the block")
    assert "method" not in vars(thing) and registry.names() == []


def test_every_undo_step_runs_when_one_fails_and_the_modification_is_gone():
    thing, registry = Thing(), Modifications("thing")

    def make(change):
        change.set(thing, "method", None)
        change.on_undo(lambda: 1 / 0)

    registry.apply("flaky", make)
    with pytest.raises(ZeroDivisionError):
        registry.remove("flaky")
    assert "method" not in vars(thing) and "flaky" not in registry


def test_a_permanent_modification_is_listed_and_refuses_undo():
    registry = Modifications("pipeline")
    registry.apply("fp8", lambda change: None, detail="weights quantized", permanent=True)
    with pytest.raises(ModificationError, match=r"fp8 \(weights quantized\) cannot be undone on pipeline: .*load the "
                                                r"pipeline again"):
        registry.remove("fp8")
    assert registry.names() == ["fp8"]


def test_a_registry_belongs_to_its_object_and_goes_with_it():
    import gc

    thing = Thing()
    modifications_of(thing).apply("wrap", lambda change: None)
    assert modifications_of(thing).names() == ["wrap"] and modifications_of(Thing()).names() == []
    assert "_qvedit" not in str(vars(thing))  # nothing stored on the object itself
    import weakref

    registry = weakref.ref(modifications_of(thing))
    del thing
    gc.collect()
    assert registry() is None  # the registry went with its object (other objects' registries may go too)


# -- diffusers' hooks -------------------------------------------------------------------------------------------------

def test_a_diffusers_hook_comes_off_leaving_the_module_as_it_was():
    torch.manual_seed(0)
    module, x = torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(2, 4)
    before, expected, seen = own_state(module), module(x), []
    registry = modifications_of(module)
    registry.apply("count", lambda change: add_model_hook(change, module[0], before_forward(seen.append), "count"))
    assert torch.equal(module(x), expected) and seen == [module[0]]
    assert "forward" in vars(module[0]) and "_diffusers_hook" in vars(module[0])  # diffusers' own way
    registry.remove("count")
    assert_same_state(before, own_state(module))
    assert torch.equal(module(x), expected) and len(seen) == 1


# -- on the tiny pipeline ---------------------------------------------------------------------------------------------

def transformer_inputs(pipe) -> tuple:
    """(args, kwargs) of the transformer's first call in a 2-step pipeline call."""
    from PIL import Image

    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)),
                                                        with_kwargs=True)
    try:
        with condition_area(48 * 64):
            pipe(image=[Image.new("RGB", (64, 48), (120, 60, 30))], prompt="p", true_cfg_scale=1.0,
                 num_inference_steps=2, height=48, width=64, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return calls[0]


def test_step_cache_and_compile_undone_leave_the_transformer_exactly_as_it_was(tiny_pipe):
    transformer = tiny_pipe.transformer
    without_step_cache(transformer)
    args, kwargs = transformer_inputs(tiny_pipe)
    expected = transformer(*args, **kwargs)[0]  # first: what a first call makes for itself is not the undo's
    before = own_state(transformer)
    use_step_cache(transformer, PerfSettings(cache="taylorseer"))
    listed = applied_to(tiny_pipe)
    assert any(line.startswith("transformer: step_cache (TaylorSeerCacheConfig(") for line in listed), listed
    with pytest.raises(ModificationError, match="step_cache is already applied to QwenImageTransformer2DModel"):
        modifications_of(transformer).apply("step_cache", lambda change: None)
    use_step_cache(transformer, PerfSettings())
    assert_same_state(before, own_state(transformer))
    compile_blocks(transformer)  # torch.compile is lazy: nothing compiles until a call
    assert "forward" in vars(transformer.transformer_blocks[0])
    modifications_of(transformer).remove("compile")
    assert_same_state(before, own_state(transformer))
    assert torch.equal(transformer(*args, **kwargs)[0], expected)


def test_single_frame_vae_undone_decodes_as_before(tiny_pipe):
    vae = tiny_pipe.vae
    use_single_frame_convolutions(vae, False)
    latents = torch.randn(1, vae.config.z_dim, 1, 6, 8, generator=torch.Generator().manual_seed(0))
    expected = vae.decode(latents).sample  # first: a first decode makes its cache's attributes (_feat_map, ...)
    before = own_state(vae)
    use_single_frame_convolutions(vae)
    use_single_frame_convolutions(vae)  # idempotent by name: "make sure it is on"
    assert modifications_of(vae).names() == ["single_frame_vae"]
    torch.testing.assert_close(vae.decode(latents).sample, expected)  # to float rounding, as documented
    use_single_frame_convolutions(vae, False)
    assert_same_state(before, own_state(vae))
    assert torch.equal(vae.decode(latents).sample, expected)


def test_the_scoped_modifications_are_listed_inside_and_gone_after_an_error(tiny_pipe):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    scheduler, area = tiny_pipe.scheduler, module.VAE_IMAGE_SIZE
    scheduler_state = dict(vars(scheduler))
    with pytest.raises(RuntimeError, match="inside"), condition_area(4096), record_velocity(scheduler):
        listed = applied_to(tiny_pipe)
        assert f"{module.__name__}: condition_area (4096 pixels)" in listed and "scheduler: record_velocity" in listed
        with pytest.raises(ModificationError, match="condition_area is already applied"), condition_area(1024):
            pass
        raise RuntimeError("inside the call")
    assert module.VAE_IMAGE_SIZE == area and vars(scheduler) == scheduler_state
    assert not [line for line in applied_to(tiny_pipe) if "condition_area" in line or "record_velocity" in line]


def test_scheduler_values_are_a_modification_and_the_models_own_comes_back(tiny_pipe):
    use_scheduler(tiny_pipe, {})
    own, names = tiny_pipe.scheduler, set(vars(tiny_pipe))
    use_scheduler(tiny_pipe, {"shift_terminal": None})
    assert "pipeline: scheduler (shift_terminal=None)" in applied_to(tiny_pipe)
    assert tiny_pipe.scheduler is not own and tiny_pipe.scheduler.config.shift_terminal is None
    use_scheduler(tiny_pipe, {})
    assert tiny_pipe.scheduler is own and set(vars(tiny_pipe)) == names
    assert tiny_pipe.config["scheduler"] == ("diffusers", "FlowMatchEulerDiscreteScheduler")
