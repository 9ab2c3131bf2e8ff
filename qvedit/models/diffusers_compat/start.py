"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds the checks): what
``QwenImageEditPlusPipeline.__call__`` does with its ``latents=`` and ``sigmas=`` arguments, computed the same way
outside it, so that a frame can start from given noise, or part-way down the schedule from an image.

- the noise's shape: ``prepare_latents`` draws (B, 1, C, h, w) with C = ``transformer.config.in_channels // 4`` and
  h, w the frame's size over ``vae_scale_factor``, rounded down to even, and packs it with ``_pack_latents`` into
  (B, (h/2)(w/2), 4C) (the same memory as (B, C, h, w));
- an image's latents: ``image_processor.preprocess`` (resized to the frame), ``_encode_vae_image`` (the VAE's
  mode, then ``(z - latents_mean) / latents_std``), packed the same way;
- the schedule: ``sigmas`` (default ``np.linspace(1, 1/N, N)``) shifted by the scheduler's ``set_timesteps`` with
  ``mu = calculate_shift(image_seq_len, ...)`` from the scheduler config, and stretched to ``shift_terminal``.
  The stretch is fixed by the list's last sigma and the shift acts on each sigma alone, so the tail of the
  default list gives exactly the tail of the full schedule: a part-way start passes that tail.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

from qvedit.models.diffusers_compat.decode import execution_device


def _pipeline_module():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    return pipeline_qwenimage_edit_plus


def latent_grid(pipe, width: int, height: int) -> tuple[int, int, int]:
    """(C, h, w) of the unpacked latents of a ``width`` x ``height`` frame, as ``prepare_latents`` shapes its
    noise (16, H/8, W/8 for Qwen-Image; the tiny model has its own channels and scale)."""
    scale = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels // 4, 2 * (int(height) // (scale * 2)),
            2 * (int(width) // (scale * 2)))


def pack(pipe, latents: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) unpacked latents packed as the pipeline packs its own noise: (1, (h/2)(w/2), 4C) on 2509, a plain
    flatten to (1, h*w, C) on 2.1 (``start21``)."""
    batch, channels, height, width = latents.shape
    return pipe._pack_latents(latents.contiguous(), batch, channels, height, width)


@torch.no_grad()
def encode_image(pipe, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """``image`` (8-bit RGB) as the pipeline's normalised latents at the frame size: (1, C, h, w) float32 on the
    pipeline's device (the VAE's mode, ``(z - latents_mean) / latents_std``, as it encodes condition images)."""
    pixels = pipe.image_processor.preprocess(image, height, width).unsqueeze(2)
    pixels = pixels.to(device=execution_device(pipe), dtype=pipe.vae.dtype)
    return pipe._encode_vae_image(image=pixels, generator=None)[:, :, 0].float()


def default_sigmas(num_steps: int) -> np.ndarray:
    """The sigmas ``__call__`` passes to the scheduler when it is given none (before the shift)."""
    return np.linspace(1.0, 1 / num_steps, num_steps)


def schedule_mu(scheduler_config, image_seq_len: int) -> float:
    """``mu`` of the resolution-dependent shift, from the packed latents' length, as ``__call__`` computes it."""
    config = dict(scheduler_config)
    return _pipeline_module().calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                              config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                              config.get("max_shift", 1.15))


def scheduled_sigmas(scheduler_config, sigmas, mu: float) -> np.ndarray:
    """The sigmas a scheduler with ``scheduler_config`` steps through for the given (unshifted) ``sigmas``, the final
    0 left out: its own ``set_timesteps`` on a fresh copy on the CPU (float32 values, as on any device)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    with np.errstate(invalid="ignore", divide="ignore"):  # a schedule that cannot run is said by schedule_problem
        scheduler.set_timesteps(sigmas=list(sigmas), mu=mu)
    return scheduler.sigmas[:-1].numpy()


def schedule_problem(scheduler_config: Optional[dict], num_steps: int, sigmas=None) -> Optional[str]:
    """Why a scheduler with ``scheduler_config`` cannot run ``num_steps`` steps (one line), or None. ``sigmas``: the
    unshifted ones the calls use (None: ``default_sigmas(num_steps)``).

    One step with ``shift_terminal`` set (Qwen-Image's 0.02) gives NaN: the sigmas are stretched so that the last
    one is ``shift_terminal``, by ``1 - (1 - s) / ((1 - s_last) / (1 - shift_terminal))``, and a single step's only
    sigma is both the first (1) and the last, so diffusers divides 0 by 0 (``stretched_t``). Any other non-finite
    schedule is said too. The shift's ``mu`` does not change whether a schedule is finite: any is taken here.
    """
    if scheduler_config is None:
        return None
    config = dict(scheduler_config)
    sigmas = scheduled_sigmas(config, default_sigmas(num_steps) if sigmas is None else sigmas,
                              schedule_mu(config, config.get("base_image_seq_len", 256)))
    if np.isfinite(sigmas).all():
        return None
    if num_steps == 1 and config.get("shift_terminal"):
        return (f"num_inference_steps=1 cannot run with this model's scheduler: it stretches its sigmas so that the "
                f"last step starts at shift_terminal={config['shift_terminal']:g}, and the only step of one must also "
                "start at sigma 1, so diffusers divides 0 by 0 and every frame would be NaN: use "
                "num_inference_steps=2 or more, or a scheduler without the stretch for one step "
                "(model.scheduler={shift_terminal:null}; the Lightning schedulers have none)")
    return (f"num_inference_steps={num_steps}: this model's scheduler gives non-finite sigmas "
            f"({np.array2string(sigmas, precision=3, threshold=6)}): choose another num_inference_steps or "
            "model.scheduler")


# -- the checks (ADAPTATIONS in __init__.py, which hands over its source readers: _has, _in_call, _in_source) ---

def check_start_latents(_has, _in_call, _in_source) -> Optional[str]:
    pipeline = _pipeline_module().QwenImageEditPlusPipeline
    return (_has(pipeline, "_pack_latents", "_encode_vae_image", "prepare_latents")
            or _in_call("num_channels_latents = self.transformer.config.in_channels // 4", "self.prepare_latents(")
            or _in_source(pipeline.prepare_latents, "height = 2 * (int(height) // (self.vae_scale_factor * 2))",
                          "shape = (batch_size, 1, num_channels_latents, height, width)",
                          "latents = randn_tensor(shape, generator=generator",
                          "latents = self._pack_latents(latents, batch_size, num_channels_latents, height, width)",
                          "latents = latents.to(device=device, dtype=dtype)")
            or _in_source(pipeline._encode_vae_image, 'sample_mode="argmax"',
                          "image_latents = (image_latents - latents_mean) / latents_std")
            or _in_call("vae_images.append(self.image_processor.preprocess(img, vae_height, vae_width).unsqueeze(2))"))


def check_start_schedule(_has, _in_call, _in_source) -> Optional[str]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return (_has(_pipeline_module(), "calculate_shift", "retrieve_timesteps")
            or _in_call("sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None "
                        "else sigmas", "image_seq_len = latents.shape[1]", "mu = calculate_shift(",
                        'self.scheduler.config.get("base_image_seq_len", 256)',
                        'self.scheduler.config.get("max_image_seq_len", 4096)',
                        'self.scheduler.config.get("base_shift", 0.5)', 'self.scheduler.config.get("max_shift", 1.15)',
                        "retrieve_timesteps(", "sigmas=sigmas", "mu=mu", "self.scheduler.set_begin_index(0)")
            or _in_source(FlowMatchEulerDiscreteScheduler.set_timesteps, "sigmas = self.time_shift(mu, 1.0, sigmas)",
                          "sigmas = self.stretch_shift_to_terminal(sigmas)")
            or _in_source(FlowMatchEulerDiscreteScheduler.stretch_shift_to_terminal,
                          "scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)"))
