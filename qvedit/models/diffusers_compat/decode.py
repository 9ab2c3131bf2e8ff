"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds the check): decoding packed
latents along the pipeline's own decode path, with gradients."""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint


def execution_device(pipe) -> torch.device:
    """The device the pipeline runs on (diffusers' private ``_execution_device``)."""
    return pipe._execution_device


class LatentDecoder:
    """Differentiable decode of packed latents, along exactly the pipeline's own decode path.

    ``decode(latents)``: latents (1, (H/16)*(W/16), C*4) packed -> image (1, 3, H, W) in [0, 1],
    equal to the pipeline's ``output_type="pt"`` image for the same latents. With
    ``checkpointing`` the VAE decoder keeps only block inputs and recomputes each block in the
    backward pass, trading one more decoder forward for most of the activation memory. With
    ``long_side`` smaller than the frame's, the latents are first resized (bilinear, antialiased) so
    that the decoded image has about that long side: a cheaper decode for losses computed smaller.

    ``tiny`` (``ttlg.decoder=tiny``, ``qvedit.guidance.tiny_decoder``) decodes instead of the VAE: it takes the
    unpacked latents as the diffusion model makes them, before the pipeline's de-normalisation, one frame
    (B, C, h, w), and returns the image in [0, 1].
    """

    def __init__(self, pipe, height: int, width: int, checkpointing: bool = False, long_side: Optional[int] = None,
                 tiny: Optional[torch.nn.Module] = None):
        self.pipe = pipe
        self.tiny = tiny
        self.vae = pipe.vae
        self.height = height
        self.width = width
        self.checkpointing = checkpointing
        scale = self.pipe.vae_scale_factor
        shrink = 1.0 if long_side is None else min(1.0, long_side / max(height, width))
        # latent (h, w) to decode at; None = as unpacked
        self.latent_size = None if shrink == 1.0 else (max(1, round(height // scale * shrink)),
                                                       max(1, round(width // scale * shrink)))
        z_dim = self.vae.config.z_dim
        self.mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        z = z.to(self.vae.dtype)
        if self.tiny is None:
            z = self._denormalise(z)
        if self.latent_size is not None:  # (B, C, 1, h, w): one latent frame
            z = torch.nn.functional.interpolate(z[:, :, 0].float(), size=self.latent_size, mode="bilinear",
                                                antialias=True, align_corners=False)[:, :, None].to(z.dtype)
        if self.tiny is not None:
            return self.tiny(z[:, :, 0])
        if self.checkpointing:
            image = self._decode_checkpointed(z)
        else:
            image = self.vae.decode(z, return_dict=False)[0]
        return (image[:, :, 0] / 2 + 0.5).clamp(0, 1)

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``latents / (1 / latents_std) + latents_mean``, as it writes it (the same rounding)."""
        return z / self.inv_std.to(z.device, z.dtype) + self.mean.to(z.device, z.dtype)

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
