"""One call of the pipeline that makes one image, written once for a clip's frames
(``qvedit.run.clip_editor.FrameMaker``) and frame 0's edit (``qvedit.run.first_frame``):

    image = call(index, images, prompt, steps, seed, size, ...)   # 8-bit RGB at ``size``, the same on every rank

around ``pipe(image=..., prompt=..., output_type="pt", ...)`` it puts, in this order: the seeded generator, the
one-line out-of-memory error (``devices.frame_memory``), the family's condition area (``Family.conditions``), the
velocity recorder the guidance reads (``diffusers_compat.record_velocity``, only for a guided call), the torchrun
team's step callback, the family's own call arguments and the start's (``latents=``, ``sigmas=``); after it the
guidance's own NaN check, the NaN check of the image, the resize to ``size`` and rank 0's image on every rank.
The denoising loop is diffusers' own: the call changes nothing in it but through its arguments and these contexts.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional, Protocol

import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import to_pil
from qvedit.models.devices import frame_memory
from qvedit.models.diffusers_compat import VelocityRecorder, execution_device, record_velocity
from qvedit.models.parallel import Team
from qvedit.run.frame_plan import ClipPlan


def checked_frame(image: torch.Tensor, frame_index: int, dtype: Optional[str] = None,
                  guided: bool = True) -> Image.Image:
    """(3, H, W) in [0, 1] -> 8-bit RGB; NaN fails instead of writing black, with the hints that fit the run
    (``dtype``: the run's, None when unknown; ``guided``: whether guidance moved the latents)."""
    if not torch.isfinite(image).all():
        hints = (["dtype=fp32 or bf16 instead of fp16"] if dtype in (None, "fp16") else []) + \
            (["a lower ttlg.lr or lower loss scales"] if guided else [])
        hint = f"try {', or '.join(hints)}" if hints else \
            "neither fp16 nor guidance is on: try another num_inference_steps or model.scheduler"
        raise QveditError(f"frame {frame_index}: the pipeline produced NaN/inf values (nothing written for this "
                          f"frame); {hint}")
    return to_pil(image)


def shows_bars(team: Team) -> bool:
    """Whether this process draws progress bars: on a terminal, on rank 0. Where stderr is a file (a batch job's
    log) a line per image is written instead, since bars that redraw leave escape codes there."""
    return team.is_main and sys.stderr.isatty()


def show_denoising_bars(pipe, shown: bool) -> None:
    """The pipeline's own bar over each call's steps ("denoising"), shown or not; it leaves no line behind."""
    pipe.set_progress_bar_config(disable=not shown, leave=False, desc="denoising")


class StepGuidance(Protocol):
    """What steers one call's steps (a frame's test-time guidance: ``qvedit.run.clip_editor.FrameGuidance``)."""

    def callback(self, velocity: VelocityRecorder) -> Callable:
        """The call's ``callback_on_step_end``, given what ``record_velocity`` records of its steps."""

    def check(self) -> None:
        """After the call: raise for a step that went NaN/inf (before the image's own, vaguer NaN check)."""


class PipelineCall:
    """``pipe`` called for one image at ``plan``'s generation size and condition area, by every rank of ``team``."""

    def __init__(self, pipe, plan: ClipPlan, team: Optional[Team] = None):
        self.pipe, self.plan, self.team = pipe, plan, team or Team()
        self.device = execution_device(pipe)

    def __call__(self, index: int, images: list, prompt: str, num_inference_steps: int, seed: int,
                 size: tuple[int, int], true_cfg_scale: float, negative_prompt: Optional[str],
                 start: Optional[dict] = None, guidance: Optional[StepGuidance] = None,
                 hints: Optional[tuple[Optional[str], bool]] = None) -> Image.Image:
        """One image, 8-bit RGB at ``size`` = (W, H), rank 0's on every rank.

        Args:
            index: the frame it is (0 for frame 0's edit): named by the out-of-memory and NaN errors.
            images: the pipeline's ``image`` list (PIL images: the condition images).
            prompt, num_inference_steps, true_cfg_scale, negative_prompt: the call's own.
            seed: its generator's seed (on the pipeline's execution device).
            size: the size the image is resized to (bicubic) when the generation size differs.
            start: the start's arguments (``latents=``, ``sigmas=``: ``qvedit.start``); they override the family's.
            guidance: the call's step guidance; None = no step callback (but the team's).
            hints: (the run's dtype, whether guidance is on) for the NaN error's hints; None = unknown (both).
        """
        family, area = self.plan.family, self.plan.condition_area
        gen_width, gen_height = self.plan.generation_size
        generator = torch.Generator(device=self.device).manual_seed(seed)
        recording = record_velocity(self.pipe.scheduler) if guidance is not None else contextlib.nullcontext()
        with frame_memory(index, (gen_width, gen_height), self.pipe, self.device), family.conditions(area), \
                recording as velocity:
            result = self.pipe(
                image=images,
                prompt=prompt,
                num_inference_steps=num_inference_steps,
                height=gen_height,
                width=gen_width,
                generator=generator,
                output_type="pt",
                callback_on_step_end=self.team.step_callback(guidance.callback(velocity) if guidance else None),
                # the family's own arguments, then the start's (latents=; a part-way start's sigmas= is the tail
                # of the family's own, model.sample_sigmas included)
                **{**family.call_arguments(area, true_cfg_scale, negative_prompt), **(start or {})},
            )
        if guidance is not None:
            guidance.check()
        image = checked_frame(family.rgb(result.images[0]), index, *(hints or ()))
        if image.size != tuple(size):
            image = image.resize(tuple(size), Image.Resampling.BICUBIC)
        return self.team.broadcast(image)
