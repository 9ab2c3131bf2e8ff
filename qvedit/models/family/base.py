"""``Family``: what the loop asks a model family (one diffusers pipeline class); each family module fills it in."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ContextManager, Optional

import numpy as np
import torch
from PIL import Image

from qvedit.models.diffusers_compat import negative_prompt_for


@dataclass(frozen=True)
class Family(abc.ABC):
    """One pipeline class and how qvedit drives it. Instances are frozen: ``configured(model)`` gives the one a run's
    ``model`` settings ask for; the class defaults describe the family."""

    name: str = ""  # qwen_edit_plus | qwen_image_21
    title: str = ""  # what README and messages call it
    pipeline_class: str = ""  # the diffusers class, as model_index.json names it
    transformer_class: str = ""  # its transformer's class
    max_images: int = 3  # condition images one call takes
    size_multiple: int = 16  # the pipeline generates at multiples of this (it rounds other sizes down)
    lora_markers: tuple = ()  # module names only this family's transformer has (LoRA keys that name them are its own)

    def configured(self, model) -> "Family":
        """This family with the call settings of ``model`` (``qvedit.settings.model.ModelSettings``)."""
        return self

    def pipeline_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    # -- what a call looks like ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def condition_sizes(self, image_size: tuple[int, int], area: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((W, H) the vision-language encoder sees, (W, H) the VAE encodes) for a condition image of ``image_size``
        (W, H) at ``area`` pixels."""

    def conditions(self, area: int) -> ContextManager:
        """The context one call runs in to encode its condition images at ``area`` pixels (none by default)."""
        return contextlib.nullcontext()

    def call_arguments(self, area: int, true_cfg_scale: float, negative_prompt: str) -> dict:
        """The family's own arguments of one pipeline call: the condition size where it is an argument, the negative
        prompt where it is used (None without true CFG: ``negative_prompt_for``), the sampling grid ..."""
        return {"negative_prompt": negative_prompt_for(negative_prompt, true_cfg_scale),
                "true_cfg_scale": true_cfg_scale}

    def rgb(self, image: torch.Tensor) -> torch.Tensor:
        """The RGB channels of one image of the pipeline's ``output_type="pt"`` output, (C, H, W) in [0, 1]."""
        return image

    @abc.abstractmethod
    def decoder(self, pipe, height: int, width: int, checkpointing: bool = False, long_side: Optional[int] = None,
                tiny=None):
        """The differentiable decode of packed latents along the pipeline's own path (``diffusers_compat``)."""

    # -- how a frame starts (qvedit.start: latents= and sigmas= of a call) -----------------------------------------

    @abc.abstractmethod
    def latent_grid(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        """(C, h, w) of the noise the pipeline draws for a ``width`` x ``height`` frame, before it packs it."""

    @abc.abstractmethod
    def pack_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) latents of ``latent_grid`` -> the call's ``latents=``, packed as the pipeline packs its own
        noise."""

    @abc.abstractmethod
    def encode_latents(self, pipe, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """``image`` (8-bit RGB) in the pipeline's latent space at a ``width`` x ``height`` frame: (1, C, h, w)
        float32 on the pipeline's device, encoded and normalised as the pipeline encodes its condition images."""

    @abc.abstractmethod
    def start_sigmas(self, pipe, num_steps: int) -> np.ndarray:
        """The unshifted sigmas (falling, in (0, 1]) a call of ``num_steps`` steps hands its scheduler: a part-way start
        passes their tail as ``sigmas=``."""

    @abc.abstractmethod
    def schedule_mu(self, pipe, grid: tuple[int, int, int]) -> float:
        """``mu`` of the scheduler's resolution-dependent shift in a call whose latents have ``grid`` (C, h, w)."""

    # -- what it takes ---------------------------------------------------------------------------------------------

    def refusal(self, ttlg, perf, parallel) -> Optional[str]:
        """Why a qvedit feature these settings turn on does not fit this family (one line), or None; before the model
        loads. ``ttlg``, ``perf``, ``parallel``: those groups' settings."""
        return None

    def loaded_problem(self, pipe, condition_image: tuple[int, int], steps: list[int]) -> Optional[str]:
        """Why the loaded ``pipe`` cannot make this run's calls (one line), or None: ``condition_image`` is the (W, H)
        of its condition images, ``steps`` ({key: value}) every ``num_inference_steps`` its calls take."""
        return None

    def replace(self, **changes) -> "Family":
        return dataclasses.replace(self, **changes)
