"""Test-time loss guidance (spec §4): gradient steps on the latents inside the denoising loop.

At the end of a denoising step diffusers calls ``callback_on_step_end`` with the latents x_{t-1}.
The callback estimates the clean sample x0 = x_{t-1} - sigma_{t-1} * v (v: the velocity the
scheduler just used, recorded by ``record_velocity``), decodes x0 along the pipeline's own decode
path, scores it with the edge / Gram / temporal losses, and moves the latents one normalised
gradient step down that loss.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from PIL import Image
from torch.utils.checkpoint import checkpoint

from qvedit import losses
from qvedit.edges import edge_map, edges_to_uint8
from qvedit.errors import QveditError

log = logging.getLogger(__name__)


@dataclass
class TTLGSettings:
    """The ``ttlg/`` config group; see conf/ttlg/*.yaml for what each key means."""

    edge_scale: float = 0.0
    gram_scale: float = 0.0
    temporal_scale: float = 0.0
    lr: float = 0.05
    every: int = 1
    start_step: Optional[int] = None
    end_step: Optional[int] = None
    last_steps: Optional[int] = 10
    edge_size: Optional[int] = 256
    gram_size: Optional[int] = 256
    temporal_size: int = 64
    edge_op: str = "sobel"
    vgg_weights: str = "imagenet"
    decode_checkpointing: bool = True

    def __post_init__(self):
        for key in ("edge_scale", "gram_scale", "temporal_scale", "lr"):
            if getattr(self, key) < 0:
                raise QveditError(f"ttlg.{key}={getattr(self, key)} is negative: use 0 (off) or a positive number")
        if self.every < 1:
            raise QveditError(f"ttlg.every={self.every} must be >= 1")
        if self.last_steps is not None and self.last_steps < 0:
            raise QveditError(f"ttlg.last_steps={self.last_steps} must be >= 0 (or null for all steps)")
        edge_map(torch.zeros(1, 1, 3, 3), self.edge_op)  # an unknown op fails now, not mid-run

    @property
    def enabled(self) -> bool:
        return self.edge_scale > 0 or self.gram_scale > 0 or self.temporal_scale > 0

    def guides_step(self, i: int, num_steps: int) -> bool:
        """Whether denoising step ``i`` (0-based, of ``num_steps``) takes a guidance step."""
        return (
            self.enabled
            and i % self.every == 0
            and (self.start_step is None or i >= self.start_step)
            and (self.end_step is None or i < self.end_step)
            and (self.last_steps is None or i >= num_steps - self.last_steps)
        )


class LatentDecoder:
    """Differentiable decode of packed latents, along exactly the pipeline's own decode path.

    ``decode(latents)``: latents (1, (H/16)*(W/16), C*4) packed -> image (1, 3, H, W) in [0, 1],
    equal to the pipeline's ``output_type="pt"`` image for the same latents. With
    ``checkpointing`` the VAE decoder keeps only block inputs and recomputes each block in the
    backward pass, trading one more decoder forward for most of the activation memory.
    """

    def __init__(self, pipe, height: int, width: int, checkpointing: bool = False):
        self.pipe = pipe
        self.vae = pipe.vae
        self.height = height
        self.width = width
        self.checkpointing = checkpointing
        z_dim = self.vae.config.z_dim
        self.mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        z = z.to(self.vae.dtype)
        z = z / self.inv_std.to(z.device, z.dtype) + self.mean.to(z.device, z.dtype)
        if self.checkpointing:
            image = self._decode_checkpointed(z)
        else:
            image = self.vae.decode(z, return_dict=False)[0]
        return (image[:, :, 0] / 2 + 0.5).clamp(0, 1)

    def _decode_checkpointed(self, z: torch.Tensor) -> torch.Tensor:
        """``vae.decode`` for one frame, block by block under activation checkpointing.

        For a single latent frame the decoder's causal cache is empty, which is the same as
        running every block with ``feat_cache=None``; that makes each block a pure function and
        safe to recompute. A test holds this equal to ``vae.decode``.
        """
        if z.shape[2] != 1:
            raise ValueError(f"checkpointed decode takes one latent frame, got {z.shape[2]}")
        decoder = self.vae.decoder
        blocks = [decoder.conv_in, *decoder.mid_block.resnets[:1]]
        for attention, resnet in zip(decoder.mid_block.attentions, decoder.mid_block.resnets[1:]):
            blocks += [attention, resnet]
        for up_block in decoder.up_blocks:
            blocks += list(up_block.resnets) + list(up_block.upsamplers or [])
        x = self.vae.post_quant_conv(z)
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        x = checkpoint(self._head, x, use_reentrant=False)
        return x.clamp(-1.0, 1.0)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        decoder = self.vae.decoder
        return decoder.conv_out(decoder.nonlinearity(decoder.norm_out(x)))


class VelocityRecorder:
    """Holds the model output (velocity v) of the scheduler's latest ``step`` call."""

    def __init__(self):
        self.velocity: Optional[torch.Tensor] = None


@contextlib.contextmanager
def record_velocity(scheduler) -> Iterator[VelocityRecorder]:
    """Record what ``scheduler.step`` is given, for the duration of one pipeline call.

    The callback only sees x_{t-1}; the velocity the step used is what turns it into an x0
    estimate. Wrapping the instance's ``step`` leaves the class and the pipeline untouched.
    """
    recorder = VelocityRecorder()
    original = scheduler.step

    def step(model_output, *args, **kwargs):
        recorder.velocity = model_output
        return original(model_output, *args, **kwargs)

    scheduler.step = step
    try:
        yield recorder
    finally:
        del scheduler.step


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

    The spec normalises by the L2 norm; dividing by the RMS (= L2 / sqrt(numel)) instead keeps
    ``lr`` meaning the same at 64² and at 1024², where an L2-normalised step of 0.05 would move
    each of the 262,144 latent elements by 1e-4, i.e. not at all.
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
        self.device = pipe._execution_device
        self.debug_dir = Path(debug_dir) if debug_dir else None
        self.vgg = None
        self.reference_grams = None
        if settings.gram_scale > 0:
            self.vgg = losses.shared_vgg(settings.vgg_weights, self.device)
            with torch.no_grad():
                self.reference_grams = self.vgg.grams(init_image.to(self.device), settings.gram_size)
        self.previous = init_image.to(self.device)
        self.guided_steps = 0  # in the frame being made
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
        if s.temporal_scale > 0:
            terms.append((s.temporal_scale, losses.temporal_loss(image.float(), self.previous, s.temporal_size)))
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
                 num_steps: int, velocity: VelocityRecorder) -> Callable:
        """The ``callback_on_step_end`` for one frame; edge_target (1, 1, H, W) in [0, 1]."""
        decoder = LatentDecoder(self.pipe, height, width, self.settings.decode_checkpointing)
        self.guided_steps = 0
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
            sigma = float(pipe.scheduler.sigmas[pipe.scheduler.step_index]) if self.x0_estimate else 0.0
            with torch.enable_grad():
                leaf = latents.detach().float().requires_grad_(True)
                x0 = leaf - sigma * velocity.velocity.detach().float() if sigma else leaf
                image = decoder.decode(x0)
                (grad,) = torch.autograd.grad(image, leaf, grad_outputs=self.image_gradient(image, edge_target))
            if debug is not None:
                self._save_debug(debug, i, image.detach())
            if not (torch.isfinite(grad).all() and torch.isfinite(latents).all()):
                raise QveditError(f"frame {frame_index}: the latents or their guidance gradient became NaN/inf at "
                                  f"step {i} (nothing written for this frame); lower ttlg.lr or the loss scales")
            return {"latents": (leaf.detach() - normalised_step(grad, self.settings.lr)).to(latents.dtype)}

        return on_step_end

    def frame_done(self, image: torch.Tensor) -> None:
        """image (1, 3, H, W) in [0, 1]: the frame just written, the temporal anchor of the next."""
        self.previous = image.to(self.device)

    def _save_debug(self, folder: Path, step: int, image: torch.Tensor) -> None:
        rgb = (image[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().astype("uint8")
        Image.fromarray(rgb).save(folder / f"step_{step:03d}_x0.png")
        edges = edges_to_uint8(edge_map(image.float(), self.settings.edge_op)[0, 0].cpu())
        Image.fromarray(edges).save(folder / f"step_{step:03d}_edges.png")
