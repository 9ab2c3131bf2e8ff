"""What each frame's pipeline call starts from: ``latents=`` (the frame's noise, or at ``start.strength`` < 1 the
previous output warped onto the frame and noised to the schedule's sigma there) and ``sigmas=`` (the tail of the
schedule), with the number of steps the call runs. The denoising loop is the pipeline's own.

A part-way start at strength s runs the last k = floor(s N) of the N steps: the pipeline is given the last k of the
sigmas it would use (``np.linspace(1, 1/N, N)``), which its scheduler shifts and stretches into exactly the last k
of the full schedule, and the latents x = (1 - sigma) x0 + sigma n at that tail's first sigma, as the scheduler
computes it for this frame size (flow matching: x_sigma lies on the straight line from the image to the noise).
x0 is the previous output frame moved onto this one by the clip's optical flow (pixels the flow marks occluded
keep the previous frame's own), encoded by the pipeline's VAE as it encodes its condition images.

What is the pipeline's own (the latents' grid and packing, the encoding, the sigmas a call uses and the shift's
``mu``) the model family says (``qvedit.models.family.Family``): 2509's pipeline packs 2x2 latent cells into a token,
Qwen-Image 2.1's takes one cell a token and encodes RGBA, and may sample a fixed grid of sigmas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import to_pil, to_tensor
from qvedit.guidance.optical_flow import FlowPair, warp
from qvedit.models.diffusers_compat.decode import execution_device
from qvedit.models.diffusers_compat.start import schedule_problem, scheduled_sigmas
from qvedit.models.family import Family, family_of
from qvedit.settings.start import StartSettings
from qvedit.start.noise import FrameNoise

log = logging.getLogger(__name__)


@dataclass
class FrameStart:
    """How one frame's pipeline call starts."""

    steps: int  # the denoising steps the call runs (the guidance step keys count over these)
    kwargs: dict = field(default_factory=dict)  # {} = the pipeline's own noise, every step; else latents= (sigmas=)


def warped_onto(previous: Image.Image, pair: FlowPair) -> Image.Image:
    """The previous frame moved onto this one along the backward flow; where the flow is occluded, the previous
    frame's own pixel (8-bit RGB, the frames' size)."""
    image = to_tensor(previous)
    backward, valid = pair.backward.float().cpu(), pair.valid.float().cpu()
    return to_pil(warp(image, backward) * valid + image * (1 - valid))


class FrameStarts:
    """The starts of a clip's frames, one after another (``frame(index, previous, pair)``).

    Rank 0 makes each start (it alone has the flow) and every rank takes it (``team.broadcast``), so a torchrun
    team's frames are the single process's. Warped noise depends only on the seed and the flow, never on the
    frames: a resumed run carries it again from its chain's start (frame 1, or a keyframe of ``schedule=segments``).
    """

    def __init__(self, settings: StartSettings, pipe, seed: int, num_steps: int, size: tuple[int, int],
                 flow=None, team=None, family: Optional[Family] = None):
        """size: (W, H) the pipeline generates at; flow: the clip's ``ClipFlow`` (rank 0; needed by warped noise
        and strength < 1); team: the torchrun ``Team`` (None: one process); family: the model family making the
        calls, as the run configures it (``ClipPlan.family``: its sampling grid); None: ``family_of(pipe)``."""
        self.settings, self.pipe, self.team = settings, pipe, team
        self.family = family or family_of(pipe)
        self.width, self.height = size
        self.num_steps, self.steps = num_steps, settings.steps_run(num_steps)
        self.main = team is None or team.is_main
        sigmas = self.family.start_sigmas(pipe, num_steps)  # unshifted, as the call hands them to its scheduler
        problem = settings.problem(num_steps) or schedule_problem(pipe.scheduler.config, num_steps, sigmas)
        if not problem and len(sigmas) != num_steps:
            problem = (f"the calls sample {len(sigmas)} sigmas (the model's sampling grid), but "
                       f"num_inference_steps={num_steps}: set num_inference_steps={len(sigmas)}")
        if problem:
            raise QveditError(problem)
        if settings.is_default:
            return
        if self.main and settings.needs_flow and flow is None:
            raise QveditError(f"start.noise={settings.noise} start.strength={settings.strength:g} needs the clip's "
                              "optical flow, and none was given: give edit_clip the clip's ClipFlow")
        self.flow = flow
        grid = self.family.latent_grid(pipe, self.width, self.height)
        self.tail = [float(s) for s in sigmas[num_steps - self.steps:]]
        mu = self.family.schedule_mu(pipe, grid)
        self.sigma = float(scheduled_sigmas(pipe.scheduler.config, self.tail, mu)[0])  # the start's noise level
        self.noise = FrameNoise(settings.noise, seed, grid, pipe.vae_scale_factor, execution_device(pipe)) \
            if self.main else None

    def frame(self, index: int, previous: Image.Image, pair: Optional[FlowPair] = None, chain_start: int = 1,
              follows_previous: bool = True) -> FrameStart:
        """Frame ``index``'s start.

        Args:
            index: the frame (>= 1).
            previous: frame ``index - 1`` as made (8-bit RGB, the frames' size), which a part-way start warps.
            pair: the flow from frame ``index`` back to ``index - 1`` (rank 0; computed here when None and needed).
            chain_start: the first frame of the chain this one is in (its warped noise is fresh): frame 1, or with
                ``schedule=segments`` the keyframe the segment starts from.
            follows_previous: False for a frame made before the frame before it (a keyframe of ``schedule=segments``):
                it starts from fresh noise (a chain of its own), over every step.
        """
        if self.settings.is_default:
            return FrameStart(self.steps)
        part_way = self.settings.from_previous and follows_previous
        if not part_way and self.settings.noise == "independent":
            return FrameStart(self.num_steps)  # the pipeline's own noise
        kwargs = None
        if self.main:
            chain_start = chain_start if follows_previous else index
            if pair is None and (part_way or (self.settings.noise == "warped" and index > chain_start)):
                pair = self.flow.pair(index)
            noise = self.noise.noise(index, pair, chain_start, self.flow.pair if self.flow is not None else None)
            if part_way:
                x0 = self.family.encode_latents(self.pipe, warped_onto(previous, pair), self.width, self.height)
                latents = (1 - self.sigma) * x0 + self.sigma * noise.to(x0.device)
                kwargs = {"latents": self.family.pack_latents(self.pipe, latents), "sigmas": self.tail}
            else:
                kwargs = {"latents": self.family.pack_latents(self.pipe, noise)}
        if self.team is not None and self.team.size > 1:
            if kwargs is not None:
                kwargs = {**kwargs, "latents": kwargs["latents"].cpu()}  # objects cross ranks on the CPU
            kwargs = self.team.broadcast(kwargs)
        return FrameStart(self.steps if part_way else self.num_steps, kwargs)
