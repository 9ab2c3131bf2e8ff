"""Every place qvedit relies on diffusers internals, each with the check that says it still holds.

qvedit never edits site-packages and never copies the denoising loop; where the pipeline offers no
argument for what qvedit needs, it adapts the pipeline at run time, and all of that is here. Each
adaptation is listed in ``ADAPTATIONS`` with what it relies on and the pipeline family it adapts (the decode path
lives in ``decode.py``, the CFG passes in ``cfg_passes.py``, Qwen-Image 2.1's ``QwenImage21Pipeline`` in
``qwenimage21.py`` and ``start21.py`` (its frame starts; 2509's in ``start.py``), the velocity recorder in
``velocity.py``, undoing diffusers' hooks exactly in ``hooks.py``,
beside this file); each change it makes to a pipeline is a named modification (``qvedit.models.modifications``).
``tests/test_diffusers_compat.py`` runs every check, so a diffusers upgrade that breaks one fails with the
adaptation's name. At start a diffusers version other than ``TESTED_DIFFUSERS`` logs one warning naming the
adaptations at risk.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from qvedit.models.diffusers_compat import qwenimage21, start21
from qvedit.models.diffusers_compat.cfg_passes import CFGPasses  # noqa: F401 (used from here)
from qvedit.models.diffusers_compat.decode import LatentDecoder, execution_device  # noqa: F401
from qvedit.models.diffusers_compat.fragments import missing_fragment
from qvedit.models.diffusers_compat.hooks import check_hook_removal
from qvedit.models.diffusers_compat.single_frame import (  # noqa: F401
    check_single_frame, single_frame_convolutions, use_single_frame_convolutions)
from qvedit.models.diffusers_compat.start import check_start_latents, check_start_schedule
from qvedit.models.diffusers_compat.velocity import VelocityRecorder, record_velocity, step_sigma  # noqa: F401
from qvedit.models.modifications import Modification, modifications_of

log = logging.getLogger(__name__)


def negative_prompt_for(negative_prompt: Optional[str], true_cfg_scale: float) -> Optional[str]:
    """The ``negative_prompt`` a pipeline call is given: None without true CFG (``true_cfg_scale <= 1``), where
    ``__call__`` would not use it and logs a warning every call that it was passed."""
    return negative_prompt if true_cfg_scale > 1 else None


TESTED_DIFFUSERS = "0.42.1"


def _pipeline_module():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    return pipeline_qwenimage_edit_plus


def _call_source() -> str:
    return inspect.getsource(_pipeline_module().QwenImageEditPlusPipeline.__call__)

# -- 1. condition area ------------------------------------------------------------------------------

@contextlib.contextmanager
def condition_area(area: int) -> Iterator[None]:
    """Encode condition images at ``area`` pixels inside the block, instead of diffusers' fixed 1 MP.

    The pipeline reads the module constant ``VAE_IMAGE_SIZE`` on every call and offers no argument for
    it; it is set for the duration of one call and restored after (the modification ``condition_area`` of the
    pipeline's module, ``qvedit.models.modifications``: one at a time).
    """
    module = _pipeline_module()
    with modifications_of(module).applied("condition_area", lambda change: change.set(module, "VAE_IMAGE_SIZE", area),
                                          detail=f"{area} pixels"):
        yield


def condition_sizes(image_size: tuple[int, int], vae_area: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((W, H) of the vision-language encoder's condition image, (W, H) the VAE encodes) for an image of
    ``image_size`` = (W, H): the pipeline derives both from the image's aspect ratio (``calculate_dimensions``,
    sides rounded to multiples of 32, so an elongated image can get a side of 0)."""
    module = _pipeline_module()
    ratio = image_size[0] / image_size[1]
    return module.calculate_dimensions(module.CONDITION_IMAGE_SIZE, ratio), module.calculate_dimensions(vae_area, ratio)


def pipeline_condition_area() -> int:
    """The area diffusers encodes condition images at by default (1024 * 1024 in 0.42.1)."""
    return _pipeline_module().VAE_IMAGE_SIZE


# -- 2. the velocity of each scheduler step: velocity.py (record_velocity, step_sigma) -----------------

# -- 3. decoding packed latents like the pipeline, with gradients: decode.py (LatentDecoder) ------------

# -- 4. running code before each prompt encoding ----------------------------------------------------

def before_prompt_encoding(change: Modification, pipe, hook: Callable[[], None]) -> None:
    """Call ``hook()`` each time the pipeline encodes a prompt, as part of ``change`` (``qvedit.models.modifications``):
    ``pipe.encode_prompt`` is looked up on the instance, so an instance attribute wraps it; undone, it is gone."""
    encode_prompt = pipe.encode_prompt

    def encode_prompt_after_hook(*args, **kwargs):
        hook()
        return encode_prompt(*args, **kwargs)

    change.set(pipe, "encode_prompt", encode_prompt_after_hook)

# -- 5. the two passes of true CFG: cfg_passes.py (CFGPasses) ------------------------------------------

# -- 6. context parallelism -------------------------------------------------------------------------

def parallel_config(transformer) -> object:
    """The context-parallel config ``enable_parallelism`` set (None before)."""
    return transformer._parallel_config


def attention_backend(transformer) -> Optional[str]:
    """The attention backend ``transformer``'s processors were set to (None = diffusers' default)."""
    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return getattr(backend, "value", backend)
    return None


# -- the list, and its checks -----------------------------------------------------------------------

def _in_call(*fragments: str) -> Optional[str]:
    """None if every fragment appears in ``QwenImageEditPlusPipeline.__call__``, in this order."""
    return _in_source(None, *fragments)


def _in_source(function: Optional[Callable], *fragments: str) -> Optional[str]:
    """None if every fragment appears in ``function``'s source (None: ``__call__``'s), in this order."""
    source = _call_source() if function is None else inspect.getsource(function)
    return missing_fragment(source, "QwenImageEditPlusPipeline.__call__" if function is None else function.__qualname__,
                            fragments)


def _has(owner, *names: str) -> Optional[str]:
    missing = [name for name in names if not hasattr(owner, name)]
    return f"{getattr(owner, '__name__', owner)} has no {', '.join(missing)}" if missing else None


def _check_condition_area() -> Optional[str]:
    return (_has(_pipeline_module(), "VAE_IMAGE_SIZE", "CONDITION_IMAGE_SIZE", "calculate_dimensions")
            or _in_call("CONDITION_IMAGE_SIZE, image_width / image_height",
                        "calculate_dimensions(VAE_IMAGE_SIZE, image_width / image_height)"))


def _check_velocity() -> Optional[str]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return (_in_call("self.scheduler.step(noise_pred", "callback_on_step_end(self, i, t, callback_kwargs)",
                     'callback_outputs.pop("latents"')
            or _has(FlowMatchEulerDiscreteScheduler(), "sigmas", "step_index", "set_timesteps")
            or _in_call("retrieve_timesteps(")
            or _in_source(_pipeline_module().retrieve_timesteps, "scheduler.set_timesteps(sigmas=sigmas, device=device")
            or _in_source(FlowMatchEulerDiscreteScheduler.set_timesteps, "sigmas = torch.from_numpy(sigmas).to(",
                          "self.sigmas = sigmas"))


def _check_decode() -> Optional[str]:
    return (_has(_pipeline_module().QwenImageEditPlusPipeline, "_unpack_latents", "_execution_device")
            or _in_call("self._unpack_latents(latents, height, width, self.vae_scale_factor)",
                        "latents = latents / latents_std + latents_mean",
                        "self.vae.decode(latents, return_dict=False)[0][:, :, 0]"))


def _check_decoder_blocks() -> Optional[str]:
    from diffusers.models.autoencoders import autoencoder_kl_qwenimage as vae

    return (_in_source(vae.QwenImageDecoder3d.forward, "self.conv_in(x)", "self.mid_block(",
                       "for up_block in self.up_blocks", "self.norm_out(x)", "self.nonlinearity(x)", "self.conv_out(x)")
            or _in_source(vae.QwenImageMidBlock.forward, "self.resnets[0](", "zip(self.attentions, self.resnets[1:])")
            or _in_source(vae.QwenImageUpBlock.forward, "for resnet in self.resnets", "self.upsamplers[0](x)")
            or _in_source(vae.AutoencoderKLQwenImage._decode, "self.post_quant_conv(z)",
                          "torch.clamp(out, min=-1.0, max=1.0)"))


def _check_prompt_encoding() -> Optional[str]:
    return _in_call("self.encode_prompt(")


def _check_cfg_passes() -> Optional[str]:
    return _in_call('self.transformer.cache_context("cond")', "self.transformer(",
                    'self.transformer.cache_context("uncond")', "self.transformer(")


def _check_context_parallel() -> Optional[str]:
    from diffusers import ContextParallelConfig, ModelMixin

    missing = {"ulysses_anything", "ring_anything"} - set(inspect.signature(ContextParallelConfig).parameters)
    if missing:
        return f"ContextParallelConfig takes no {', '.join(sorted(missing))}"
    if "self._parallel_config" not in inspect.getsource(ModelMixin):
        return "ModelMixin no longer keeps self._parallel_config"
    return _has(ModelMixin, "enable_parallelism", "set_attention_backend")


def _check_lora_keys() -> Optional[str]:
    from diffusers.loaders.peft import PeftAdapterMixin

    source = inspect.getsource(PeftAdapterMixin.load_lora_adapter)
    missing = [f for f in ('k.startswith(f"{prefix}.")', "set_peft_model_state_dict(") if f not in source]
    return (f"PeftAdapterMixin.load_lora_adapter no longer contains {missing[0]!r}" if missing else
            _has(_pipeline_module().QwenImageEditPlusPipeline, "lora_state_dict", "load_lora_weights", "set_adapters",
                 "fuse_lora", "unload_lora_weights"))


def _check_group_offload() -> Optional[str]:
    # diffusers issue 12673 (Qwen-Image, streamed group offloading with record_stream: garbage images): tensors were
    # recorded on the transfer stream; PR 12721 (2025-12-03, first in v0.36.0) hands down the compute stream instead.
    from diffusers import DiffusionPipeline, ModelMixin
    from diffusers.hooks.group_offloading import ModuleGroup

    missing = {"use_stream", "record_stream"} - set(inspect.signature(ModelMixin.enable_group_offload).parameters)
    return ((f"ModelMixin.enable_group_offload takes no {', '.join(sorted(missing))}" if missing else None)
            or _in_source(ModuleGroup._onload_from_memory, "default_stream = ", "with context:",
                          "default_stream=default_stream")
            or _in_source(ModuleGroup._transfer_tensor_to_device, "record_stream(default_stream)")
            or _in_source(DiffusionPipeline._execution_device.fget, "_get_group_onload_device"))


def _check_step_cache() -> Optional[str]:
    import re

    from diffusers import DiffusionPipeline, QwenImageTransformer2DModel
    from diffusers.hooks import taylorseer_cache
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

    hook = taylorseer_cache.TaylorSeerCacheHook
    lite = (any(re.fullmatch(p, "transformer_blocks.7") for p in taylorseer_cache._BLOCK_IDENTIFIERS)
            and any(re.fullmatch(p, "proj_out") for p in taylorseer_cache._PROJ_OUT_IDENTIFIERS))
    try:
        TransformerBlockRegistry.get(QwenImageTransformerBlock)
    except ValueError:
        return "TransformerBlockRegistry has no QwenImageTransformerBlock (the first block cache needs it)"
    return ((None if lite else "TaylorSeer's lite mode no longer matches transformer_blocks.N and proj_out")
            or _has(QwenImageTransformer2DModel, "enable_cache", "disable_cache", "is_cache_enabled")
            or _in_source(hook._measure_should_compute, "current_step < self.disable_cache_before_step",
                          "(current_step - self.disable_cache_before_step - 1) % self.cache_interval == 0",
                          "current_step >= self.disable_cache_after_step")
            or _in_call("self.maybe_free_model_hooks()")
            or _in_source(DiffusionPipeline.maybe_free_model_hooks, "component._reset_stateful_cache()"))


def _check_cache_around_compiled_blocks() -> Optional[str]:
    from diffusers import QwenImageTransformer2DModel
    from diffusers.hooks import HookRegistry

    if "QwenImageTransformerBlock" not in (QwenImageTransformer2DModel._repeated_blocks or ()):
        return "QwenImageTransformer2DModel._repeated_blocks no longer names QwenImageTransformerBlock"
    return _in_source(HookRegistry.register_hook, "forward = self._module_ref.forward", "fn_ref.forward = forward",
                      "self._module_ref.forward = ")


def _check_zero_cond_t() -> Optional[str]:
    from diffusers import QwenImageTransformer2DModel

    if "zero_cond_t" not in inspect.signature(QwenImageTransformer2DModel).parameters:
        return "QwenImageTransformer2DModel takes no zero_cond_t"
    if "modulate_index" not in QwenImageTransformer2DModel._cp_plan.get("transformer_blocks.*", {}):
        return "QwenImageTransformer2DModel._cp_plan no longer splits modulate_index with the sequence"
    return (_in_source(QwenImageTransformer2DModel.forward, "if self.zero_cond_t:", "[0] * prod(sample[0])")
            or _in_call("img_shapes = [",
                        "(1, height // self.vae_scale_factor // 2, width // self.vae_scale_factor // 2)"))


@dataclass(frozen=True)
class Adaptation:
    name: str
    used_by: str
    relies_on: str
    check: Callable[[], Optional[str]]  # None when the assumption holds, else what changed
    family: str = "qwen_edit_plus"  # the pipeline it adapts (qvedit.models.family): QwenImageEditPlusPipeline's


EDIT_PLUS_ADAPTATIONS = (
    Adaptation("condition_area", "condition_area key",
               "module constant pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE, read by __call__ on every call; "
               "condition image sizes from calculate_dimensions(CONDITION_IMAGE_SIZE / VAE_IMAGE_SIZE, W / H)",
               _check_condition_area),
    Adaptation("record_velocity", "guidance x0 estimate",
               "__call__ calls scheduler.step(noise_pred, ...) once per step, then callback_on_step_end, and "
               "takes its latents; scheduler.sigmas[step_index] is the sigma of the new latents; set_timesteps "
               "(through retrieve_timesteps) computes the sigmas in numpy and then moves them to the device",
               _check_velocity),
    Adaptation("LatentDecoder", "guidance decode",
               "__call__ decodes with _unpack_latents, z / (1/latents_std) + latents_mean, vae.decode()[0][:, :, 0]; "
               "private _unpack_latents and _execution_device", _check_decode),
    Adaptation("checkpointed decode", "ttlg.decode_checkpointing",
               "AutoencoderKLQwenImage: post_quant_conv, decoder conv_in / mid_block (resnets, attentions) / "
               "up_blocks (resnets, upsamplers) / norm_out / nonlinearity / conv_out, clamp to [-1, 1]",
               _check_decoder_blocks),
    Adaptation("before_prompt_encoding", "perf.offload_text_encoder; qvedit.bench times encode_prompt the same way",
               "__call__ encodes prompts through self.encode_prompt (an instance attribute can wrap it)",
               _check_prompt_encoding),
    Adaptation("CFGPasses", "parallel.cfg_degree",
               "__call__ runs the transformer inside cache_context('cond'), then cache_context('uncond'), each step",
               _check_cfg_passes),
    Adaptation("context parallelism", "parallel.ulysses_degree / ring_degree",
               "ContextParallelConfig(ulysses_anything, ring_anything), ModelMixin._parallel_config, "
               "processor._attention_backend", _check_context_parallel),
    Adaptation("LoRA key check", "model.loras (qvedit/models/lora.py)",
               "lora_state_dict gives diffusers-format keys transformer.<module>.lora_A/B.weight; load_lora_adapter "
               "keeps only keys under transformer. and loads them with peft, warning only about keys of no module",
               _check_lora_keys),
    Adaptation("streamed group offload", "perf.group_offload", "the fix of diffusers issue 12673 (PR 12721, v0.36.0): "
               "ModuleGroup records tensors on the compute stream; _execution_device finds the onload device",
               _check_group_offload),
    Adaptation("step cache", "perf.cache (qvedit/models/step_cache.py)",
               "transformer.enable_cache / disable_cache; TaylorSeerCacheHook's schedule of steps in full (start, "
               "interval, stop); its lite mode hooks transformer_blocks.N and proj_out; QwenImageTransformerBlock in "
               "TransformerBlockRegistry; __call__ ends in maybe_free_model_hooks, which resets the cache's state",
               _check_step_cache),
    Adaptation("step cache around compiled blocks", "perf.compile with perf.cache (qvedit.models.perf.compile_blocks)",
               "_repeated_blocks names QwenImageTransformerBlock; HookRegistry.register_hook wraps module.forward as "
               "it finds it (the compiled forward) and puts its own forward on the instance",
               _check_cache_around_compiled_blocks),
    Adaptation("zero_cond_t (2511)", "model=qwen_edit_2511 (with parallel.* degrees, perf.cache)",
               "the transformer config's zero_cond_t gives condition tokens the t = 0 modulation through "
               "modulate_index, built from img_shapes with the target image first (as __call__ passes them) and "
               "split with the sequence by _cp_plan", _check_zero_cond_t),
    Adaptation("start latents", "start.noise, start.strength (qvedit/start/)",
               "prepare_latents draws (B, 1, in_channels // 4, h, w) noise (h, w: the size over vae_scale_factor, "
               "even) and packs it with _pack_latents, and takes given latents as they are; _encode_vae_image gives "
               "(z - latents_mean) / latents_std of the VAE's mode",
               lambda: check_start_latents(_has, _in_call, _in_source)),
    Adaptation("start schedule", "start.strength < 1; the one-step check of num_inference_steps",
               "__call__ shifts np.linspace(1, 1/N, N) or the given sigmas with mu = calculate_shift(image_seq_len, "
               "config values) and begins at index 0; set_timesteps shifts each sigma alone and stretches by the last "
               "one (stretch_shift_to_terminal: 0/0 for a single sigma of 1)",
               lambda: check_start_schedule(_has, _in_call, _in_source)),
    Adaptation("hook removal", "qvedit.models.modifications (perf.cache, perf.offload_text_encoder, perf.single_frame_vae)",
               "HookRegistry lives in module._diffusers_hook, puts its forward on the instance and the wrapped one "
               "back on removal, caches child registries in _child_registries_cache; CacheMixin keeps _cache_config",
               check_hook_removal),
    Adaptation("single-frame VAE convolutions", "perf.single_frame_vae; the toy model's training (qvedit/toy/train.py)",
               "QwenImageCausalConv3d pads time causally by 2 * padding_t zero frames (its _padding) and convolves "
               "with padding 0, so one uncached frame meets only the kernel's last time slice", check_single_frame),
)
# QwenImage21Pipeline's (Qwen-Image 2.1), whose checks live in qwenimage21.py and start21.py
ADAPTATIONS = EDIT_PLUS_ADAPTATIONS + tuple(Adaptation(*entry, family="qwen_image_21")
                                           for entry in qwenimage21.CHECKS + start21.CHECKS)


def broken_adaptations() -> list[tuple[Adaptation, str]]:
    """(adaptation, what changed) for every adaptation whose check fails on the installed diffusers."""
    broken = []
    for adaptation in ADAPTATIONS:
        try:
            problem = adaptation.check()
        except Exception as err:  # an import or attribute that vanished is itself the answer
            problem = f"{type(err).__name__}: {err}"
        if problem:
            broken.append((adaptation, problem))
    return broken


def warn_if_untested_diffusers() -> bool:
    """Log one warning when the installed diffusers is not the tested one; returns whether it did."""
    import diffusers

    if diffusers.__version__ == TESTED_DIFFUSERS:
        return False
    broken = broken_adaptations()
    detail = "; ".join(f"{a.name}: {problem}" for a, problem in broken) if broken else "their checks pass"
    log.warning("diffusers %s is not the version qvedit was tested with (%s): these adaptations of its internals "
                "may break: %s (%s)", diffusers.__version__, TESTED_DIFFUSERS,
                ", ".join(f"{a.name} ({a.used_by})" for a in ADAPTATIONS), detail)
    return True
