"""The ``qwen_image_21`` family: ``QwenImage21Pipeline``, Qwen-Image 2.1.

What differs from 2509 for qvedit (each relied-on detail checked in ``diffusers_compat.qwenimage21``):

- condition images are sized by the call's ``output_resolution`` argument (a side; qvedit passes the square root of
  ``condition_area``), one size for the Qwen3-VL encoder and the VAE, whose image processor must leave them as they
  are (its min/max pixels, checked once the model loads);
- frames are generated at multiples of 32 (the pipeline rounds down to them), latents are packed unpatched, 64
  channels, one token per 16x16 pixels, and the VAE decodes RGBA, of which qvedit keeps RGB;
- up to 10 condition images a call (the model's card), so frame 0 and a keyframe both fit;
- sampled without CFG by default (``true_cfg_scale`` 1.0): the negative prompt is passed only with CFG on, where the
  pipeline uses it (else it warns on every call);
- ``model.kv_cache`` (``use_kv_cache``) and ``model.sample_sigmas`` (``sigmas``: a fixed sampling grid) are its own.

Refused here, each in one line: ``ttlg.decoder=tiny`` (taehv's ``taew2_1`` was trained for Qwen-Image's 16-channel
latents), ``parallel.*`` degrees (no context-parallel plan in diffusers 0.42.1; the CFG passes run over the joint
text/image sequence, which qvedit's split of the passes was not built for), ``perf.cache=first_block`` (no
``QwenImage21TransformerBlock`` in diffusers' block registry).

The ``start`` group applies as on 2509, through this family's own latents (``diffusers_compat.start21``): noise of
``in_channels`` channels per 16x16 pixels, flattened, not packed 2x2; the warped previous frame encoded as RGBA; ``mu``
from one token per latent cell; a part-way start's ``sigmas=`` the tail of the call's grid (``model.sample_sigmas``,
the pipeline's ``sample_sigmas``, or the default one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from qvedit.models.diffusers_compat import qwenimage21, start21
from qvedit.models.diffusers_compat import start as start_compat
from qvedit.models.family.base import Family


@dataclass(frozen=True)
class Image21(Family):
    name: str = "qwen_image_21"
    title: str = "Qwen-Image 2.1"
    pipeline_class: str = "QwenImage21Pipeline"
    transformer_class: str = "QwenImage21Transformer2DModel"
    max_images: int = 10
    size_multiple: int = 32
    # the single-stream blocks' SwiGLU MLP and the text projection: modules 2509's transformer does not have
    lora_markers: tuple = (".img_mlp.gate_layer", ".img_mlp.proj", ".img_mlp.out", "txt_in.in_layer",
                           "txt_in.out_layer")
    kv_cache: bool = True
    sample_sigmas: Optional[tuple] = None

    def configured(self, model) -> "Image21":
        grid = tuple(model.sample_sigmas) if model.sample_sigmas is not None else None
        return self.replace(kv_cache=model.kv_cache is not False, sample_sigmas=grid)

    def condition_sizes(self, image_size: tuple[int, int], area: int) -> tuple[tuple[int, int], tuple[int, int]]:
        size = qwenimage21.condition_size(image_size, area)
        return size, size

    def call_arguments(self, area: int, true_cfg_scale: float, negative_prompt: str) -> dict:
        arguments = {"output_resolution": qwenimage21.output_resolution(area), "use_kv_cache": self.kv_cache,
                     "true_cfg_scale": true_cfg_scale}
        if true_cfg_scale > 1:
            arguments["negative_prompt"] = negative_prompt
        if self.sample_sigmas is not None:
            arguments["sigmas"] = list(self.sample_sigmas)
        return arguments

    def rgb(self, image: torch.Tensor) -> torch.Tensor:
        return image[:qwenimage21.RGB]

    def decoder(self, pipe, height: int, width: int, checkpointing: bool = False, long_side: Optional[int] = None,
                tiny=None):
        if tiny is not None:
            raise ValueError("Qwen-Image 2.1 has no tiny guidance decoder (ttlg.decoder=tiny)")
        return qwenimage21.LatentDecoder21(pipe, height, width, checkpointing, long_side)

    def refusal(self, ttlg, perf, parallel) -> Optional[str]:
        if ttlg.enabled and ttlg.decoder == "tiny":
            return ("ttlg.decoder=tiny decodes with taehv's taew2_1, trained for Qwen-Image's 16-channel latents (Wan "
                    "2.1's VAE); Qwen-Image 2.1's VAE makes 64-channel latents at 16x, which it cannot read: use "
                    "ttlg.decoder=vae (the default) with model.release=2.1")
        if parallel.context_degree > 1:
            return (f"parallel.ulysses_degree / ring_degree ({parallel.context_degree} GPUs a pass) do not apply to "
                    "Qwen-Image 2.1: its transformer has no context-parallel plan in diffusers 0.42.1: run it on one "
                    "GPU")
        if parallel.cfg_degree > 1:
            return ("parallel.cfg_degree=2 does not apply to Qwen-Image 2.1: it is sampled without CFG, and with CFG "
                    "its two passes run over the joint text/image sequence, which qvedit's split of the passes was "
                    "not built for: run it on one GPU")
        if perf.cache == "first_block":
            return ("perf.cache=first_block does not apply to Qwen-Image 2.1: diffusers 0.42.1's first block cache "
                    "has no entry for its QwenImage21TransformerBlock: use perf.cache=taylorseer")
        return None

    def latent_grid(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        return start21.latent_grid(pipe, width, height)

    def pack_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        return start_compat.pack(pipe, latents)  # 2.1's _pack_latents takes what 2509's does (start21's check)

    def encode_latents(self, pipe, image: Image.Image, width: int, height: int) -> torch.Tensor:
        return start21.encode_image(pipe, image, width, height)

    def start_sigmas(self, pipe, num_steps: int) -> np.ndarray:
        return start21.call_sigmas(pipe, self.sample_sigmas, num_steps)

    def schedule_mu(self, pipe, grid: tuple[int, int, int]) -> float:
        return start21.schedule_mu(pipe.scheduler.config, grid)

    def loaded_problem(self, pipe, condition_image: tuple[int, int], steps: dict) -> Optional[str]:
        low, high = qwenimage21.vision_pixel_range(pipe)
        pixels = condition_image[0] * condition_image[1]
        if not low <= pixels <= high:
            bound = f"at least {low}" if pixels < low else f"at most {high}"
            return (f"condition images would be {condition_image[0]}x{condition_image[1]} = {pixels} pixels here, and "
                    f"Qwen-Image 2.1's vision encoder takes {low} to {high} (its image processor resizes others, and "
                    f"they no longer line up with their VAE tokens): set condition_area to {bound}")
        grid = pipe.config.get("sample_sigmas") if self.sample_sigmas is None else None
        for key, count in steps.items():
            if grid and count != len(grid):
                return (f"this model's pipeline fixes its sampling grid at {len(grid)} steps (sample_sigmas in its "
                        f"model_index.json), so a call takes {len(grid)} steps, but {key}={count}: set "
                        f"{key}={len(grid)}")
        return None
