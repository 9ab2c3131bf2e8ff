"""Test-time loss guidance (docs/METHOD.md, section 3): gradient steps on the latents inside the denoising loop.

At the end of a denoising step diffusers calls ``callback_on_step_end`` with the latents x_{t-1}.
The callback estimates the clean sample x0 = x_{t-1} - sigma_{t-1} * v (v: the velocity the
scheduler just used, recorded by ``diffusers_compat.record_velocity``), decodes x0 along the
pipeline's own decode path (the model family's: ``diffusers_compat.LatentDecoder``, ``LatentDecoder21``), scores it with the edge / Gram /
temporal losses, and moves the latents one normalised gradient step down that loss. With
``ttlg.decoder=tiny`` taehv's tiny decoder (``tiny_decoder``) decodes x0 instead of the VAE.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from qvedit.core.color_stats import LabStats
from qvedit.core.errors import QveditError
from qvedit.core.images import to_pil
from qvedit.guidance import losses
from qvedit.guidance.edges import edge_map, edges_to_uint8
from qvedit.guidance.optical_flow import FlowPair, warp
from qvedit.guidance.tiny_decoder import tiny_decoder
from qvedit.models.diffusers_compat import VelocityRecorder, execution_device, step_sigma
from qvedit.models.family import family_of
from qvedit.settings.guidance import TTLGSettings

log = logging.getLogger(__name__)


def supports_x0_estimate(scheduler) -> bool:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = scheduler.config
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and not config.get("stochastic_sampling", False)


def refuse_inference_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise QveditError(
            "torch.inference_mode() is active: TTLG needs gradients and inference mode cannot be undone; "
            "call qvedit outside inference_mode (torch.no_grad is fine)"
        )


def normalised_step(grad: torch.Tensor, lr: float, eps: float = 1e-12) -> torch.Tensor:
    """``lr * grad / rms(grad)`` per sample: each latent element moves by ``lr`` on average (RMS).

    The design normalises by the L2 norm (docs/METHOD.md, section 3, step 6); dividing by the RMS
    (= L2 / sqrt(numel)) instead keeps ``lr`` meaning the same at 64² and at 1024², where an
    L2-normalised step of 0.05 would move each of the 262,144 latent elements by 1e-4, i.e. not at all.
    """
    dims = tuple(range(1, grad.dim()))
    rms = grad.pow(2).mean(dim=dims, keepdim=True).sqrt()
    return lr * grad / (rms + eps)


class Guide:
    """TTLG for one clip: the VGG model and frame 0's Gram matrices live here for the whole run.

    ``callback(...)`` makes the ``callback_on_step_end`` for one frame; ``frame_done(image)``
    hands over the finished frame for the temporal loss of the next one.
    """

    def __init__(self, settings: TTLGSettings, pipe, init_image: torch.Tensor, debug_dir: Optional[str] = None):
        """init_image: (1, 3, H, W) in [0, 1], frame 0."""
        refuse_inference_mode()
        self.settings = settings
        self.pipe = pipe
        self.device = execution_device(pipe)
        self.debug_dir = Path(debug_dir) if debug_dir else None
        self.vgg = None
        self.reference_grams = None
        if settings.gram_scale > 0:
            self.vgg = losses.shared_vgg(settings.vgg_weights, self.device)
            with torch.no_grad():
                self.reference_grams = self.vgg.grams(init_image.to(self.device), settings.gram_size)
        self.previous = init_image.to(self.device)
        self.temporal_target, self.temporal_mask = self.previous, None  # set per frame by callback()
        self.color_target: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (mean, std), each (3,); per frame
        self.guided_steps = 0  # in the frame being made
        self.finite: list[tuple[int, torch.Tensor]] = []  # (guided step, its latents and gradient finite?), a frame's
        self.tiny = tiny_decoder(settings.tiny_decoder, pipe.vae, pipe.vae_scale_factor, self.device) \
            if settings.decoder == "tiny" else None
        self.x0_estimate = supports_x0_estimate(pipe.scheduler)
        if not self.x0_estimate:
            log.warning("%s has no x0 estimate here: guidance decodes the latents themselves",
                        type(pipe.scheduler).__name__)

    def loss_terms(self, image: torch.Tensor, edge_target: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """(scale, loss) of each enabled term; image (1, 3, H, W) in [0, 1], edge_target (1, 1, H, W)."""
        s = self.settings
        terms = []
        if s.edge_scale > 0:
            terms.append((s.edge_scale, losses.edge_loss(image.float(), edge_target, s.edge_op, s.edge_size)))
        if s.gram_scale > 0:
            terms.append((s.gram_scale, losses.gram_loss(self.vgg.grams(image, s.gram_size), self.reference_grams)))
        if s.temporal_scale > 0 and self.temporal_target is not None:
            terms.append((s.temporal_scale, losses.temporal_loss(image.float(), self.temporal_target, s.temporal_size,
                                                                 self.temporal_mask)))
        if s.color_scale > 0:
            terms.append((s.color_scale, losses.color_loss(image, *self.color_target)))
        return terms

    def image_gradient(self, image: torch.Tensor, edge_target: torch.Tensor) -> torch.Tensor:
        """The descent direction in image space: sum of scale * (term gradient / its RMS).

        Each term's gradient is normalised before weighting, so the scales are relative weights
        whatever the losses' magnitudes (here edge ~5e-2 and Gram ~4e-4: summed as plain losses,
        ``gram_scale=0.2`` would not move the Gram loss at all). One decoder backward follows.
        """
        gradient = torch.zeros_like(image)
        for scale, loss in self.loss_terms(image, edge_target):
            (term,) = torch.autograd.grad(loss, image, retain_graph=True)
            gradient = gradient + scale * normalised_step(term, 1.0)
        return gradient

    def callback(self, frame_index: int, edge_target: torch.Tensor, height: int, width: int,
                 num_steps: int, velocity: VelocityRecorder, flow: Optional[FlowPair] = None,
                 color_target: Optional[LabStats] = None, temporal: bool = True) -> Callable:
        """The ``callback_on_step_end`` for one frame (docs/METHOD.md, section 3).

        Args:
            frame_index: the frame being made (names the debug folder and errors).
            edge_target: (1, 1, H, W) in [0, 1], the frame's edge map at the generation size.
            height, width: the generation size, in pixels.
            num_steps: the call's ``num_inference_steps`` (which steps are guided depends on it).
            velocity: what ``record_velocity`` records of the scheduler's steps (the x0 estimate needs it).
            flow: with ``ttlg.temporal_mode=flow``, the flow from this frame back to the previous one (from the
                source frames): it moves the previous frame onto this one for the temporal loss, and its
                occlusions are left out.
            color_target: the frame's target CIELAB statistics (``qvedit.anchor.color.ColorAnchor.target``),
                for ``ttlg.color_scale``.
            temporal: False leaves the temporal term out of this frame (a keyframe of ``schedule=segments``: the
                frame before it is not made yet, and the frame it follows is many frames away).

        Returns:
            The callback: ``(pipe, i, t, callback_kwargs) -> {"latents": ...}`` on a guided step, ``{}`` on others.
        """
        decoder = family_of(self.pipe).decoder(self.pipe, height, width, self.settings.decode_checkpointing,
                                               self.settings.decode_size, self.tiny)
        self.guided_steps = 0
        self.finite = []
        if self.settings.color_scale > 0:
            if color_target is None:
                raise ValueError("ttlg.color_scale needs the frame's colour target")
            self.color_target = tuple(torch.as_tensor(v, dtype=torch.float32, device=self.device)
                                      for v in (color_target.mean, color_target.std))
        self.temporal_target, self.temporal_mask = (self.previous if temporal else None), None
        if self.settings.temporal_mode == "flow" and self.settings.temporal_scale > 0 and temporal:
            if flow is None:
                raise ValueError("ttlg.temporal_mode=flow needs the frame's flow")
            self.temporal_target = warp(self.previous, flow.backward.to(self.device))
            self.temporal_mask = flow.valid.to(self.device)
        edge_target = edge_target.to(self.device)
        debug = self.debug_dir / f"frame_{frame_index:05d}" if self.debug_dir else None
        if debug is not None:
            debug.mkdir(parents=True, exist_ok=True)
            Image.fromarray(edges_to_uint8(edge_target[0, 0].cpu())).save(debug / "target_edges.png")

        def on_step_end(pipe, i: int, t, callback_kwargs: dict) -> dict:
            if not self.settings.guides_step(i, num_steps):
                return {}
            latents = callback_kwargs["latents"]
            self.guided_steps += 1
            sigma = step_sigma(pipe.scheduler, velocity) if self.x0_estimate else 0.0
            with torch.enable_grad():
                leaf = latents.detach().float().requires_grad_(True)
                x0 = leaf - sigma * velocity.velocity.detach().float() if sigma else leaf
                image = decoder.decode(x0)
                (grad,) = torch.autograd.grad(image, leaf, grad_outputs=self.image_gradient(image, edge_target))
            if debug is not None:
                self._save_debug(debug, i, image.detach())
            self.finite.append((i, torch.isfinite(grad).all() & torch.isfinite(latents).all()))  # read after the frame
            return {"latents": (leaf.detach() - normalised_step(grad, self.settings.lr)).to(latents.dtype)}

        return on_step_end

    def check_finite(self, frame_index: int) -> None:
        """Raise for the first guided step of the frame just made whose latents or gradient were NaN/inf. Read once
        the pipeline call returns, not at each step: reading a flag on a GPU waits for all the work queued."""
        for step, finite in self.finite:
            if not bool(finite):
                raise QveditError(f"frame {frame_index}: the latents or their guidance gradient became NaN/inf at "
                                  f"step {step} (nothing written for this frame); lower ttlg.lr or the loss scales")

    def frame_done(self, image: torch.Tensor) -> None:
        """image (1, 3, H, W) in [0, 1]: the frame just written, the temporal anchor of the next."""
        self.previous = image.to(self.device)

    def _save_debug(self, folder: Path, step: int, image: torch.Tensor) -> None:
        to_pil(image).save(folder / f"step_{step:03d}_x0.png")
        edges = edges_to_uint8(edge_map(image.float(), self.settings.edge_op)[0, 0].cpu())
        Image.fromarray(edges).save(folder / f"step_{step:03d}_edges.png")
