"""The VAE's causal 3D convolutions computed as 2D convolutions for one frame.

``AutoencoderKLQwenImage`` is a video VAE: every ``QwenImageCausalConv3d`` pads the time axis with
``2 * padding_t`` zero frames in front of its input and convolves a (k_t, k_h, k_w) kernel over it. For a single
frame with nothing cached from an earlier one, every kernel slice but the last meets those zeros, so the output is
the 2D convolution of the frame with the kernel's last time slice: the same function with a third of the work.
PyTorch's CPU backend also runs 3D convolutions on a slow path (``slow_conv3d``, about 1 GFLOP/s here) where 2D
ones take oneDNN, so on the CPU this is many times faster. The numbers agree to float rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from qvedit.models.modifications import modifications_of


SINGLE_FRAME = "single_frame_vae"  # the modification's name (qvedit.models.modifications)


def _single_frame_forward(conv, original):
    """``conv``'s forward: a 2D convolution for one uncached frame, ``original`` (the 3D one) otherwise."""
    kernel_t = conv.kernel_size[0]
    causal = conv._padding[4] == kernel_t - 1 and conv._padding[5] == 0 and conv.stride[0] == 1

    def forward(x, cache_x=None):
        if x.shape[2] != 1 or cache_x is not None or not causal:
            return original(x, cache_x)
        left, right, top, bottom = conv._padding[:4]
        frame = F.pad(x[:, :, 0], (left, right, top, bottom))
        out = F.conv2d(frame, conv.weight[:, :, -1], conv.bias, stride=conv.stride[1:], dilation=conv.dilation[1:],
                       groups=conv.groups)
        return out.unsqueeze(2)

    return forward


def _convolutions_2d(change, vae: torch.nn.Module) -> None:
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    for conv in (m for m in vae.modules() if isinstance(m, QwenImageCausalConv3d)):
        change.set(conv, "forward", _single_frame_forward(conv, conv.forward))


def use_single_frame_convolutions(vae: torch.nn.Module, on: bool = True) -> None:
    """From now on, ``vae``'s causal 3D convolutions run as 2D ones on single uncached frames (``on``), or as before
    again (not ``on``): the modification ``single_frame_vae`` of the VAE, applied or removed; gradients flow as
    through the 3D ones."""
    changes = modifications_of(vae)
    if on and SINGLE_FRAME not in changes:
        changes.apply(SINGLE_FRAME, lambda change: _convolutions_2d(change, vae))
    elif not on:
        changes.remove(SINGLE_FRAME)


@contextlib.contextmanager
def single_frame_convolutions(vae: torch.nn.Module) -> Iterator[None]:
    """``use_single_frame_convolutions`` inside the block only (as the toy model's training uses it)."""
    if SINGLE_FRAME in modifications_of(vae):
        yield
        return
    with modifications_of(vae).applied(SINGLE_FRAME, lambda change: _convolutions_2d(change, vae)):
        yield


def check_single_frame() -> Optional[str]:
    """None while ``QwenImageCausalConv3d`` pads time causally in ``_padding`` and convolves with ``padding=0``."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    source = inspect.getsource(QwenImageCausalConv3d)
    for fragment in ("self._padding = (self.padding[2], self.padding[2], self.padding[1], self.padding[1], "
                     "2 * self.padding[0], 0)", "self.padding = (0, 0, 0)", "def forward(self, x, cache_x=None)",
                     "x = F.pad(x, padding)", "return super().forward(x)"):
        if fragment not in source:
            return f"QwenImageCausalConv3d no longer contains {fragment!r}"
    return None
