"""Differentiable soft edge maps, and the 8-bit edge-frame format they are stored in.

Losses use these instead of OpenCV Canny: Canny thresholds and thins, so it has no gradient.
An edge PNG written with ``edges_to_uint8(sobel_edges(x))`` and read back with
``image_to_edge_target`` is the same map up to 1/255 quantisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.settings.guidance import EDGE_OPS as EDGE_OP_NAMES

_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W) luma; a (B,1,H,W) input is returned as is."""
    if img.ndim != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"expected a (B,3,H,W) or (B,1,H,W) image, got shape {tuple(img.shape)}")
    if img.shape[1] == 1:
        return img
    weights = torch.tensor(_GRAY_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * weights).sum(dim=1, keepdim=True)


def _filter(gray: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) convolved with (K,1,3,3) kernels under replicate padding -> (B,K,H,W)."""
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernels.to(dtype=gray.dtype, device=gray.device))


_SOBEL = torch.tensor(
    [
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
    ]
).unsqueeze(1)

_LAPLACIAN = torch.tensor([[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]).unsqueeze(1)


def sobel_edges(img: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B,3,H,W) or (B,1,H,W) in [0,1] -> (B,1,H,W) Sobel magnitude in [0,1].

    Divided by 4 so that a full-contrast axis-aligned step gives 1.0; ``eps`` keeps the gradient
    of the square root finite on flat regions.
    """
    d = _filter(to_grayscale(img), _SOBEL)
    magnitude = torch.sqrt(d[:, :1] ** 2 + d[:, 1:] ** 2 + eps)
    return (magnitude / 4.0).clamp(max=1.0)


def laplacian_edges(img: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B,3,H,W) or (B,1,H,W) in [0,1] -> (B,1,H,W) 4-neighbour Laplacian magnitude in [0,1].

    A 0->1 step gives 1.0 on both sides of it.
    """
    lap = _filter(to_grayscale(img), _LAPLACIAN)
    return torch.sqrt(lap**2 + eps).clamp(max=1.0)


EDGE_OPS = {"sobel": sobel_edges, "laplacian": laplacian_edges}
assert set(EDGE_OPS) == set(EDGE_OP_NAMES), "ttlg.edge_op's allowed names and the implemented ops differ"


def edge_map(img: torch.Tensor, op: str) -> torch.Tensor:
    """(B,3,H,W) or (B,1,H,W) in [0,1] -> (B,1,H,W) edges in [0,1] by the named op."""
    try:
        fn = EDGE_OPS[op]
    except KeyError:
        raise QveditError(
            f"unknown edge op {op!r}: set it to one of {', '.join(sorted(EDGE_OPS))}"
        ) from None
    return fn(img)


def edges_to_uint8(edge: torch.Tensor) -> np.ndarray:
    """(1,1,H,W) or (H,W) tensor in [0,1] -> (H,W) uint8 array, round(255 * edge)."""
    if edge.ndim == 4 and edge.shape[:2] == (1, 1):
        edge = edge[0, 0]
    elif edge.ndim != 2:
        raise ValueError(f"expected a (1,1,H,W) or (H,W) edge map, got shape {tuple(edge.shape)}")
    scaled = edge.detach().float().clamp(0.0, 1.0).mul(255.0).round()
    return scaled.to(torch.uint8).cpu().numpy()


def image_to_edge_target(image: Image.Image) -> torch.Tensor:
    """A PIL edge frame in any mode -> (1,1,H,W) float32 in [0,1], its 8-bit grayscale / 255."""
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(gray)[None, None]
