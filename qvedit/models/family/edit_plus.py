"""The ``qwen_edit_plus`` family: ``QwenImageEditPlusPipeline``, Qwen-Image-Edit-2509 and Qwen-Image-Edit-2511.

2511 is 2509's transformer with ``zero_cond_t`` in its config (the condition images' tokens modulated as clean, at
t = 0: diffusers PR #12839), read from the weights' ``transformer/config.json``: nothing in a call changes, so one
family serves both (``diffusers_compat``: "zero_cond_t (2511)" holds what 2511 relies on). The pipeline encodes
condition images at a module constant's area (``diffusers_compat.condition_area``) and the vision-language encoder's
copy at 384², and takes up to three of them (its model card: one to three).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Optional

import numpy as np
import torch
from PIL import Image

from qvedit.models import diffusers_compat
from qvedit.models.diffusers_compat import start as start_compat
from qvedit.models.family.base import Family


@dataclass(frozen=True)
class EditPlus(Family):
    name: str = "qwen_edit_plus"
    title: str = "Qwen-Image-Edit-Plus (Qwen-Image-Edit-2509, -2511)"
    pipeline_class: str = "QwenImageEditPlusPipeline"
    transformer_class: str = "QwenImageTransformer2DModel"
    max_images: int = 3
    size_multiple: int = 16
    # the double-stream blocks' own modules: AdaLN modulation and MLP of each stream, the text stream's projections
    lora_markers: tuple = (".img_mod.", ".txt_mod.", ".img_mlp.net.", ".txt_mlp.", ".attn.add_q_proj",
                           ".attn.add_k_proj")

    def condition_sizes(self, image_size: tuple[int, int], area: int) -> tuple[tuple[int, int], tuple[int, int]]:
        return diffusers_compat.condition_sizes(image_size, area)

    def conditions(self, area: int) -> ContextManager:
        return diffusers_compat.condition_area(area)

    def decoder(self, pipe, height: int, width: int, checkpointing: bool = False, long_side: Optional[int] = None,
                tiny=None):
        return diffusers_compat.LatentDecoder(pipe, height, width, checkpointing, long_side, tiny)

    def latent_grid(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        return start_compat.latent_grid(pipe, width, height)

    def pack_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        return start_compat.pack(pipe, latents)

    def encode_latents(self, pipe, image: Image.Image, width: int, height: int) -> torch.Tensor:
        return start_compat.encode_image(pipe, image, width, height)

    def start_sigmas(self, pipe, num_steps: int) -> np.ndarray:
        return start_compat.default_sigmas(num_steps)

    def schedule_mu(self, pipe, grid: tuple[int, int, int]) -> float:
        return start_compat.schedule_mu(pipe.scheduler.config, (grid[1] // 2) * (grid[2] // 2))  # a token per 2x2 cells
