"""Gaussian noise carried along optical flow that stays white Gaussian noise (``start.noise=warped``).

Resampling noise (bilinear, say) averages neighbouring values: its variance drops and neighbours become
correlated, which a diffusion model reads as a blurred, smoother start ("How I Warped Your Noise", Chang et al.,
ICLR 2024). Here the noise is moved by a discrete transport on a fine grid and then summed into latent cells,
Go-with-the-Flow's way (Burgert et al., CVPR 2025: warp at the video's resolution, downsample by sum / sqrt(area)):

- the fine field F (s*h, s*w, C) holds independent N(0, 1) values, ``factor`` s fine cells per latent cell a side
  (qvedit takes the VAE's scale factor: one cell per pixel of the frame, where the flow is computed);
- frame k: each fine cell x takes the cell of frame k-1's field at floor(x + b(x) + u), b the backward flow in
  fine cells and u one uniform offset per frame, shared by every cell (so sub-cell motion is carried on average
  instead of rounded away, and neighbours with the same motion round alike: no holes in a pan);
- a source cell wanted by several cells (an expansion) goes to the one whose exact source position is nearest
  it; the others, and every cell whose source is occluded or outside the frame, take fresh noise;
- so each source value is used at most once and which goes where never looks at the values: the new field is
  again independent N(0, 1) values, exactly (a permutation of some, fresh ones for the rest);
- the latent noise is each s x s block summed and divided by s: s^2 independent N(0, 1) over s is N(0, 1), and
  disjoint blocks are independent, so it is white Gaussian noise, exactly, frame after frame.

A motion of d fine cells keeps about (1 - d/s) of a latent cell's sum per axis: the noise moves with the scene.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from qvedit.guidance.optical_flow import resize_flow

FreshNoise = Callable[[int], torch.Tensor]  # count -> (count, C) independent N(0, 1) values (on the CPU)


def fine_field(fresh: FreshNoise, channels: int, height: int, width: int) -> torch.Tensor:
    """A new fine field (height, width, C) of fresh values, drawn cell after cell in row order (channels last: a
    cell's values move together, one row of memory)."""
    return fresh(height * width).reshape(height, width, channels)


def transport(field: torch.Tensor, backward: torch.Tensor, valid: torch.Tensor, offset: tuple[float, float],
              fresh: FreshNoise) -> torch.Tensor:
    """The fine field (H, W, C) of frame k-1 carried onto frame k (module docstring).

    Args:
        field: (H, W, C), frame k-1's fine field, on the device the work is done on (a GPU's is ~100x the CPU's).
        backward: (2, H, W) backward flow in fine cells: frame k's cell x came from x + backward(x) in frame k-1.
        valid: (H, W) bool, False where the flow is occluded (the cell gets fresh noise).
        offset: (u_x, u_y) in [0, 1), the frame's rounding offset.
        fresh: draws the fresh values, in row order of the cells that take them.

    Returns:
        (H, W, C) float32 on ``field``'s device, frame k's fine field: independent N(0, 1) values again.
    """
    height, width, channels = field.shape
    device = field.device
    backward, valid = backward.to(device), valid.to(device)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                            torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    source_x, source_y = xs + backward[0].float(), ys + backward[1].float()
    cell_x, cell_y = torch.floor(source_x + offset[0]), torch.floor(source_y + offset[1])
    inside = valid & (cell_x >= 0) & (cell_x < width) & (cell_y >= 0) & (cell_y < height)
    source = (cell_y.clamp(0, height - 1) * width + cell_x.clamp(0, width - 1)).long().flatten()
    count = height * width
    # A source cell wanted by several goes to the nearest (distance quantised to 1/256 cell), ties to the first.
    distance = ((source_x - cell_x) ** 2 + (source_y - cell_y) ** 2).flatten()
    key = (distance * 256).long().clamp(0, 1023) * count + torch.arange(count, device=device)
    inside = inside.flatten()
    never = torch.iinfo(torch.long).max
    best = torch.full((count,), never, dtype=torch.long, device=device)
    best.scatter_reduce_(0, source[inside], key[inside], reduce="amin")  # the minimum: the same in any order
    keep = inside & (best[source] == key)
    moved = field.reshape(count, channels).index_select(0, source).float()
    missing = int((~keep).sum())
    if missing:
        moved[~keep] = fresh(missing).to(device)
    return moved.view(height, width, channels)


def fine_flow(backward: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame's backward flow (1, 2, H, W) in pixels and its valid mask (1, 1, H, W) at the fine grid ``size`` =
    (height, width): ((2, h, w) in fine cells, (h, w) bool)."""
    flow = resize_flow(backward.float(), tuple(size))[0]
    mask = F.interpolate(valid.float(), size=tuple(size), mode="nearest")[0, 0] > 0.5
    return flow, mask


def latent_noise(field: torch.Tensor, factor: int) -> torch.Tensor:
    """(s*h, s*w, C) fine field -> (1, C, h, w) latent noise: each s x s block summed, over s."""
    fine_height, fine_width, channels = field.shape
    blocks = field.view(fine_height // factor, factor, fine_width // factor, factor, channels).sum((1, 3)) / factor
    return blocks.permute(2, 0, 1)[None].contiguous()


def bilinear_warp(noise: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Noise (1, C, h, w) resampled bilinearly along a backward flow (1, 2, h, w) in cells: what this module
    does *not* do (it blurs the noise and lowers its variance); for comparison in tests."""
    from qvedit.guidance.optical_flow import warp

    return warp(noise, backward)
