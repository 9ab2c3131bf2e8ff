"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds these checks, family ``qwen_image_21``):
what ``QwenImage21Pipeline.__call__`` (Qwen-Image 2.1) does with its ``latents=`` and ``sigmas=`` arguments, computed
the same way outside it, so that a frame can start from given noise, or part-way down the schedule from an image
(``qvedit.start``; 2509's counterpart is ``start.py``).

- the noise's shape: ``prepare_latents`` draws (B, 1, C, h, w) with C = ``transformer.config.in_channels`` (all of
  them: 2.1's transformer takes its latents unpatched) and h, w the frame's size over ``vae_scale_factor`` (16),
  rounded down to even, and packs it with ``_pack_latents``, a plain flatten into (B, h*w, C) (the same values as
  (B, C, h, w), transposed);
- an image's latents: ``__call__`` converts each condition image to RGBA (the VAE encodes four channels),
  ``image_processor.preprocess`` resizes it, ``_encode_vae_image`` takes the VAE's mode and
  ``(z - latents_mean) / latents_std``;
- the schedule: ``sigmas`` (the call's, else the pipeline config's ``sample_sigmas``, else
  ``np.linspace(1, 1/N, N)``) shifted by the scheduler's ``set_timesteps`` with ``mu = calculate_shift(h*w, ...)``
  (one token per latent cell: ``latents.shape[1]``), then stretched to ``shift_terminal``: as on 2509, the tail of the
  list gives exactly the tail of the full schedule, so a part-way start passes that tail (of the sampling grid too).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from qvedit.models.diffusers_compat.decode import execution_device
from qvedit.models.diffusers_compat.qwenimage21 import _module, in_source
from qvedit.models.diffusers_compat.start import default_sigmas


def latent_grid(pipe, width: int, height: int) -> tuple[int, int, int]:
    """(C, h, w) of the unpacked latents of a ``width`` x ``height`` frame, as ``prepare_latents`` shapes its noise
    (64, H/16, W/16 for Qwen-Image 2.1, h and w even; the tiny 2.1 model has its own channels)."""
    scale = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels, 2 * (int(height) // (scale * 2)), 2 * (int(width) // (scale * 2)))


@torch.no_grad()
def encode_image(pipe, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """``image`` (8-bit RGB) as the pipeline's normalised latents at the frame size: (1, C, h, w) float32 on the
    pipeline's device, encoded as ``__call__`` encodes a condition image (RGBA, opaque here; the VAE's mode,
    ``(z - latents_mean) / latents_std``)."""
    pixels = pipe.image_processor.preprocess(image.convert("RGBA"), height=height, width=width).unsqueeze(2)
    pixels = pixels.to(device=execution_device(pipe), dtype=pipe.vae.dtype)
    return pipe._encode_vae_image(image=pixels, generator=None)[:, :, 0].float()


def call_sigmas(pipe, sigmas: Optional[Sequence[float]], num_steps: int) -> np.ndarray:
    """The unshifted sigmas a call steps through: ``sigmas`` (the call's ``sigmas=``: ``model.sample_sigmas``), else
    the pipeline config's ``sample_sigmas`` (a distilled checkpoint's grid), else ``np.linspace(1, 1/N, N)``."""
    if sigmas is None:
        sigmas = getattr(pipe, "config", {}).get("sample_sigmas")
    if sigmas is None:
        return default_sigmas(num_steps)
    return np.asarray([float(s) for s in sigmas], dtype=np.float64)


def schedule_mu(scheduler_config, grid: tuple[int, int, int]) -> float:
    """``mu`` of the resolution-dependent shift for latents of ``grid`` (C, h, w): from h*w tokens, as ``__call__``
    computes it."""
    config = dict(scheduler_config)
    return _module().calculate_shift(grid[1] * grid[2], config.get("base_image_seq_len", 256),
                                     config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                     config.get("max_shift", 1.15))


# -- the checks (diffusers_compat.ADAPTATIONS, family qwen_image_21) -------------------------------------------------

def check_start_latents() -> Optional[str]:
    pipeline = _module().QwenImage21Pipeline
    missing = [name for name in ("_pack_latents", "_encode_vae_image", "prepare_latents")
               if not hasattr(pipeline, name)]
    if missing:
        return f"QwenImage21Pipeline has no {', '.join(missing)}"
    return (in_source(None, "num_channels_latents = self.transformer.config.in_channels", "self.prepare_latents(")
            or in_source(pipeline.prepare_latents, "height = 2 * (int(height) // (self.vae_scale_factor * 2))",
                         "shape = (batch_size, 1, num_channels_latents, height, width)",
                         "latents = randn_tensor(shape, generator=generator",
                         "latents = self._pack_latents(latents, batch_size, num_channels_latents, height, width)",
                         "latents = latents.to(device=device, dtype=dtype)")
            or in_source(pipeline._pack_latents, "latents.view(batch_size, num_channels_latents, height * width)"
                         ".transpose(1, 2)")
            or in_source(pipeline._encode_vae_image, 'sample_mode="argmax"',
                         "image_latents = (image_latents - latents_mean) / latents_std")
            or in_source(None, 'img = img.convert("RGBA")',
                         "self.image_processor.preprocess(img, width=input_width, height=input_height).unsqueeze(2)")
            or in_source(pipeline.__init__, "self.vae_scale_factor = 16"))


def check_start_schedule() -> Optional[str]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not hasattr(_module(), "calculate_shift"):
        return "pipeline_qwenimage21 has no calculate_shift"
    return (in_source(None, "if sigmas is None:", "sigmas = self.config.sample_sigmas", "if sigmas is None:",
                      "sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)",
                      "mu = calculate_shift(", "latents.shape[1],",
                      'self.scheduler.config.get("base_image_seq_len", 256)',
                      'self.scheduler.config.get("max_image_seq_len", 4096)',
                      'self.scheduler.config.get("base_shift", 0.5)', 'self.scheduler.config.get("max_shift", 1.15)',
                      "retrieve_timesteps(", "sigmas=sigmas, mu=mu")
            or in_source(FlowMatchEulerDiscreteScheduler.set_timesteps, "sigmas = self.time_shift(mu, 1.0, sigmas)",
                         "sigmas = self.stretch_shift_to_terminal(sigmas)"))


# (name, used by, what it relies on, check): entries of diffusers_compat.ADAPTATIONS, family qwen_image_21
CHECKS = (
    ("start latents (2.1)", "start.noise, start.strength on Qwen-Image 2.1 (qvedit/start/)",
     "prepare_latents draws (B, 1, in_channels, h, w) noise (h, w: the size over vae_scale_factor 16, even) and packs "
     "it with _pack_latents (a flatten to (B, h*w, C)), and takes given latents as they are; condition images are "
     "converted to RGBA and preprocessed; _encode_vae_image gives (z - latents_mean) / latents_std of the VAE's mode",
     check_start_latents),
    ("start schedule (2.1)", "start.strength < 1 on Qwen-Image 2.1",
     "__call__ takes sigmas=, else the config's sample_sigmas, else np.linspace(1, 1/N, N), shifted with mu = "
     "calculate_shift(latents.shape[1], config values); set_timesteps shifts each sigma alone and stretches by the "
     "last one", check_start_schedule),
)
