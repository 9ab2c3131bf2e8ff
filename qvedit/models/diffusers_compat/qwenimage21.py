"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds these checks, family
``qwen_image_21``): what qvedit relies on in diffusers' ``QwenImage21Pipeline`` (Qwen-Image 2.1).

- **Condition size.** 2.1 has no module constant for it: ``__call__``'s ``output_resolution`` argument sizes every
  condition image (``calculate_dimensions(output_resolution ** 2, W / H)``, sides in multiples of 32), one resize
  feeding both the Qwen3-VL encoder and the VAE. qvedit passes ``output_resolution`` for ``condition_area``.
- **The decode.** ``_unpack_latents`` is a plain flatten back (the transformer takes latents unpatched: one token per
  16x16 pixels), then ``latents * latents_std + latents_mean`` and ``vae.decode(latents)[0][:, :, 0]``, whose image has
  four channels: the VAE reconstructs RGBA (its ``out_channels``). qvedit keeps RGB, as it does with every input.
- **Checkpointed decode.** ``AutoencoderKLQwenImage21``'s decoder for one frame, block by block.
- The velocity, the prompt encoding hook, the sampling grid (``sample_sigmas`` / ``sigmas``), ``use_kv_cache``, the
  LoRA loaders and diffusers' step caches, each with its check below.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

from qvedit.models.diffusers_compat.decode import LatentDecoder
from qvedit.models.diffusers_compat.fragments import missing_fragment

RGB = 3  # the channels of the VAE's RGBA image qvedit keeps


def _module():
    from diffusers.pipelines.qwenimage21 import pipeline_qwenimage21

    return pipeline_qwenimage21


def call_source() -> str:
    return inspect.getsource(_module().QwenImage21Pipeline.__call__)


def output_resolution(area: int) -> int:
    """The ``output_resolution`` argument that has condition images encoded at about ``area`` pixels (its square),
    never below ``area``: qvedit's own lower bounds on the area (``qvedit.run.frame_plan.vae_area``) keep holding."""
    return max(32, math.isqrt(int(area) - 1) + 1)


def condition_size(image_size: tuple[int, int], area: int) -> tuple[int, int]:
    """(W, H) a condition image of ``image_size`` = (W, H) is resized to, for the Qwen3-VL encoder and the VAE alike."""
    side = output_resolution(area)
    width, height, _ = _module().calculate_dimensions(side * side, image_size[0] / image_size[1])
    return width, height


def vision_pixel_range(pipe) -> tuple[int, int]:
    """(min, max) pixels the Qwen3-VL image processor leaves an image at; outside it the processor resizes the image
    and its vision slots no longer match the VAE tokens of the same image (transformers' ``size`` of the
    ``Qwen2VLImageProcessor``: ``shortest_edge`` / ``longest_edge`` are pixel counts there)."""
    size = pipe.processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


class LatentDecoder21(LatentDecoder):
    """``LatentDecoder`` along 2.1's decode path: latents (1, (H/16)*(W/16), 64) packed -> image (1, 3, H, W) in
    [0, 1], the RGB channels of the pipeline's ``output_type="pt"`` image for the same latents."""

    def __init__(self, pipe, height: int, width: int, checkpointing: bool = False, long_side: Optional[int] = None):
        super().__init__(pipe, height, width, checkpointing, long_side)
        self.std = 1.0 / self.inv_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return super().decode(latents)[:, :RGB]

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``latents * latents_std + latents_mean``."""
        z_dim = self.vae.config.z_dim
        std = torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(z.device, z.dtype)
        return z * std + self.mean.to(z.device, z.dtype)

    def _decode_checkpointed(self, z: torch.Tensor) -> torch.Tensor:
        """``vae.decode`` for one frame, block by block under activation checkpointing. One frame is the first and
        only chunk: every feature cache is empty, the same as running each block without one (its image
        specialisation of causal convolutions refuses a cache anyway). A test holds this equal to ``vae.decode``."""
        if z.shape[2] != 1:
            raise ValueError(f"checkpointed decode takes one latent frame, got {z.shape[2]}")
        decoder = self.vae.decoder
        blocks = [decoder.conv_in, decoder.mid_block,
                  *(partial(block, first_chunk=True) for block in decoder.up_blocks), self._head]
        x = self.vae.post_quant_conv(z)
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        if self.vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_qwenimage21 import _unpatchify

            x = _unpatchify(x, patch_size=self.vae.config.patch_size)
        return x.clamp(-1.0, 1.0)


# -- the checks (diffusers_compat.ADAPTATIONS, family qwen_image_21) -------------------------------------------------

def in_source(function: Optional[Callable], *fragments: str) -> Optional[str]:
    """None if every fragment appears in ``function``'s source (None: ``QwenImage21Pipeline.__call__``), in order."""
    source = call_source() if function is None else inspect.getsource(function)
    return missing_fragment(source, "QwenImage21Pipeline.__call__" if function is None else function.__qualname__,
                            fragments)


def check_condition_size() -> Optional[str]:
    if not hasattr(_module(), "calculate_dimensions"):
        return "pipeline_qwenimage21 has no calculate_dimensions"
    if "output_resolution" not in inspect.signature(_module().QwenImage21Pipeline.__call__).parameters:
        return "QwenImage21Pipeline.__call__ takes no output_resolution"
    return in_source(None, "output_resolution * output_resolution, image_width / image_height",
                     "input_images.append(self.image_processor.resize(img, width=input_width, height=input_height))",
                     "self.image_processor.preprocess(img, width=input_width, height=input_height)")


def check_vision_pixels() -> Optional[str]:
    from transformers import Qwen2VLImageProcessor

    size = Qwen2VLImageProcessor().size
    missing = [key for key in ("shortest_edge", "longest_edge") if size.get(key) is None]
    return f"Qwen2VLImageProcessor().size has no {', '.join(missing)}" if missing else None


def check_velocity() -> Optional[str]:
    return in_source(None, "noise_pred = noise_pred[:, -latents.size(1) :]",
                     "self.scheduler.step(noise_pred, t, latents", "callback_on_step_end(self, i, t, callback_kwargs)",
                     'callback_outputs.pop("latents"')


def check_decode() -> Optional[str]:
    from diffusers import AutoencoderKLQwenImage21

    if inspect.signature(AutoencoderKLQwenImage21).parameters["out_channels"].default != 4:
        return "AutoencoderKLQwenImage21's out_channels is no longer 4 (RGBA): check which channels are RGB"
    return (in_source(None, "self._unpack_latents(latents, height, width, self.vae_scale_factor)",
                      "latents = latents * latents_std + latents_mean",
                      "self.vae.decode(latents, return_dict=False)[0][:, :, 0]")
            or in_source(_module().QwenImage21Pipeline._unpack_latents, "latents.transpose(1, 2).reshape(")
            or in_source(_module().QwenImage21Pipeline.__init__, "self.vae_scale_factor = 16"))


def check_decoder_blocks() -> Optional[str]:
    from diffusers.models.autoencoders import autoencoder_kl_qwenimage21 as vae

    return (in_source(vae.QwenImage21Decoder3d.forward, "self.conv_in(x)", "self.mid_block(x, feat_cache=",
                      "for up_block in self.up_blocks:", "first_chunk=first_chunk)", "self.norm_out(x)",
                      "self.nonlinearity(x)", "self.conv_out(x)")
            or in_source(vae.AutoencoderKLQwenImage21._decode, "self.post_quant_conv(z)", "first_chunk=True",
                         "_unpatchify(out", "torch.clamp(out, min=-1.0, max=1.0)"))


def check_prompt_encoding() -> Optional[str]:
    return in_source(None, "self.encode_prompt(")


def check_sampling_grid() -> Optional[str]:
    parameters = inspect.signature(_module().QwenImage21Pipeline.__call__).parameters
    missing = [name for name in ("sigmas", "use_kv_cache") if name not in parameters]
    return (f"QwenImage21Pipeline.__call__ takes no {', '.join(missing)}" if missing else
            in_source(None, "if sigmas is None:", "sigmas = self.config.sample_sigmas",
                      "cache_enabled = use_kv_cache and self.transformer.config.causal_condition"))


def check_lora() -> Optional[str]:
    from diffusers import QwenImage21Pipeline, QwenImage21Transformer2DModel
    from diffusers.loaders.peft import PeftAdapterMixin

    missing = [name for name in ("lora_state_dict", "load_lora_weights", "set_adapters", "fuse_lora",
                                 "unload_lora_weights") if not hasattr(QwenImage21Pipeline, name)]
    if missing:
        return f"QwenImage21Pipeline has no {', '.join(missing)}"
    return None if issubclass(QwenImage21Transformer2DModel, PeftAdapterMixin) else \
        "QwenImage21Transformer2DModel no longer takes LoRAs (PeftAdapterMixin)"


def check_step_cache() -> Optional[str]:
    from diffusers import QwenImage21Transformer2DModel
    from diffusers.hooks import taylorseer_cache
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21TransformerBlock

    try:
        TransformerBlockRegistry.get(QwenImage21TransformerBlock)
        return ("TransformerBlockRegistry now has QwenImage21TransformerBlock: perf.cache=first_block may work on 2.1, "
                "so lift its refusal (qvedit.models.family.image21) after trying it")
    except ValueError:
        pass
    if "QwenImage21TransformerBlock" not in (QwenImage21Transformer2DModel._repeated_blocks or ()):
        return "QwenImage21Transformer2DModel._repeated_blocks no longer names QwenImage21TransformerBlock"
    return in_source(taylorseer_cache.TaylorSeerState.update, "prev.shape != new_factors[j].shape")


def check_no_context_parallelism() -> Optional[str]:
    from diffusers import QwenImage21Transformer2DModel

    if getattr(QwenImage21Transformer2DModel, "_cp_plan", None):
        return ("QwenImage21Transformer2DModel now has a _cp_plan: parallel.ulysses_degree / ring_degree may work on "
                "2.1, so lift their refusal (qvedit.models.family.image21) after trying them")
    return None


# (name, used by, what it relies on, check)
CHECKS = (
    ("condition size (2.1)", "condition_area on Qwen-Image 2.1",
     "__call__(output_resolution) resizes every condition image to calculate_dimensions(output_resolution ** 2, "
     "W / H), one size for the Qwen3-VL encoder and the VAE", check_condition_size),
    ("vision encoder's pixel range (2.1)", "condition_area on Qwen-Image 2.1 (checked after the model loads)",
     "transformers' Qwen2VLImageProcessor.size holds min / max pixels as shortest_edge / longest_edge",
     check_vision_pixels),
    ("record_velocity (2.1)", "guidance x0 estimate on Qwen-Image 2.1",
     "__call__ slices the target tokens' velocity, calls scheduler.step(noise_pred, t, latents), then "
     "callback_on_step_end, and takes its latents", check_velocity),
    ("LatentDecoder21", "guidance decode on Qwen-Image 2.1",
     "_unpack_latents (a plain flatten back, vae_scale_factor 16), latents * latents_std + latents_mean, "
     "vae.decode()[0][:, :, 0]; the VAE's image is RGBA (out_channels 4)", check_decode),
    ("checkpointed decode (2.1)", "ttlg.decode_checkpointing on Qwen-Image 2.1",
     "AutoencoderKLQwenImage21: post_quant_conv, decoder conv_in / mid_block / up_blocks (first_chunk) / norm_out / "
     "nonlinearity / conv_out, unpatchify, clamp to [-1, 1]", check_decoder_blocks),
    ("before_prompt_encoding (2.1)", "perf.offload_text_encoder on Qwen-Image 2.1",
     "__call__ encodes prompts through self.encode_prompt", check_prompt_encoding),
    ("sampling grid and KV cache (2.1)", "model.sample_sigmas, model.kv_cache",
     "__call__(sigmas=...) over the config's sample_sigmas over num_inference_steps; use_kv_cache",
     check_sampling_grid),
    ("LoRA loading (2.1)", "model.loras on Qwen-Image 2.1",
     "QwenImage21Pipeline's LoRA loader (QwenImageLoraLoaderMixin) and a PeftAdapterMixin transformer", check_lora),
    ("step cache (2.1)", "perf.cache on Qwen-Image 2.1",
     "TaylorSeer restarts its expansion when the output's shape changes (the KV cache's prefill step returns prefix + "
     "target tokens); no QwenImage21TransformerBlock in TransformerBlockRegistry (first_block refused); "
     "_repeated_blocks (perf.compile)", check_step_cache),
    ("no context parallelism (2.1)", "parallel.ulysses_degree / ring_degree refused on Qwen-Image 2.1",
     "QwenImage21Transformer2DModel has no _cp_plan", check_no_context_parallelism),
)
