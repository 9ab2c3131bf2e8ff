"""Optical flow between two frames: the estimators (DIS, RAFT), warping, occlusion and the warp error.

Flows are in pixels, ``(dx, dy)``, shaped (B, 2, H, W). ``backward`` flow of frame t points from each
pixel x of frame t to where it was in frame t-1: frame_t(x) ~ frame_{t-1}(x + backward(x)), so
``warp(frame_{t-1}, backward)`` is frame t-1 moved onto frame t. A pixel is occluded (seen in frame t
but not in frame t-1) where the forward-backward check of Sundaram et al. 2010 fails:
|f_b + f_f(x + f_b)|^2 > 0.01 (|f_b|^2 + |f_f(x + f_b)|^2) + 0.5. The flow of a whole clip, frame pair by
frame pair, is ``qvedit.io.clip_flow.ClipFlow``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qvedit.core.errors import QveditError


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image (B, C, H, W) sampled at x + flow(x) (bilinear, border pixels repeated); flow (B, 2, H, W)."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device, dtype=flow.dtype),
                            torch.arange(width, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[:, 0]) / max(width - 1, 1) * 2 - 1
    y = (ys + flow[:, 1]) / max(height - 1, 1) * 2 - 1
    grid = torch.stack([x, y], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def occluded(backward: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels of frame t the forward-backward check rejects; both flows (B, 2, H, W)."""
    forward_at = warp(forward, backward)  # f_f(x + f_b(x))
    mismatch = (backward + forward_at).pow(2).sum(1, keepdim=True)
    magnitude = backward.pow(2).sum(1, keepdim=True) + forward_at.pow(2).sum(1, keepdim=True)
    return mismatch > 0.01 * magnitude + 0.5


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 2, h, w) flow -> (B, 2, H, W) at ``size`` = (H, W), vectors scaled with the image."""
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / width, size[0] / height], dtype=flow.dtype, device=flow.device)
    return resized * scale.view(1, 2, 1, 1)


def enlarged(a: torch.Tensor, b: torch.Tensor, min_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (1, 3, H, W) frames enlarged alike (aspect kept) until the short side is ``min_side``, for a flow
    method that cannot take smaller ones; its flow goes back to the frames' size with ``resize_flow``."""
    size = a.shape[-2:]
    scale = min_side / min(size)
    if scale <= 1:
        return a, b
    big = (math.ceil(size[0] * scale), math.ceil(size[1] * scale))
    return tuple(F.interpolate(x, size=big, mode="bilinear", align_corners=False) for x in (a, b))


class DISFlow:
    """OpenCV's DIS optical flow (no weights; CPU). ``(a, b)`` (1, 3, H, W) in [0, 1] -> (1, 2, H, W) a -> b."""

    def __init__(self):
        try:
            import cv2
        except ImportError:
            raise QveditError("flow=dis needs OpenCV: pip install opencv-python-headless") from None
        self.cv2 = cv2
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    MIN_SIDE = 16  # OpenCV's DIS refuses images with both sides under 12 pixels

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        size = tuple(a.shape[-2:])
        a, b = enlarged(a, b, self.MIN_SIDE)
        grey_a, grey_b = (np.ascontiguousarray(self._grey(image)) for image in (a, b))
        flow = self.dis.calc(grey_a, grey_b, None)  # (H, W, 2): a(x) ~ b(x + flow(x))
        return resize_flow(torch.from_numpy(flow).permute(2, 0, 1)[None].to(a.device), size)

    @staticmethod
    def _grey(image: torch.Tensor) -> np.ndarray:
        weights = torch.tensor([0.2989, 0.5870, 0.1140], device=image.device).view(1, 3, 1, 1)
        grey = (image * weights).sum(1)[0].clamp(0, 1)
        return (grey * 255).round().to(torch.uint8).cpu().numpy()


def raft_weights_path() -> Path:
    """Where torch hub caches torchvision's RAFT-large checkpoint (honours TORCH_HOME at call time)."""
    from torchvision.models.optical_flow import Raft_Large_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(Raft_Large_Weights.DEFAULT.url)


class RAFTFlow:
    """torchvision's RAFT-large. ``(a, b)`` (1, 3, H, W) in [0, 1] -> (1, 2, H, W) a -> b.

    ``weights="pretrained"`` reads the checkpoint from the torch hub cache (or downloads it once);
    ``"random"`` is for tests only.
    """

    def __init__(self, weights: str, device: torch.device):
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

        self.device = device
        if weights == "pretrained":
            path = raft_weights_path()
            try:
                state = (torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else
                         torch.hub.load_state_dict_from_url(Raft_Large_Weights.DEFAULT.url, map_location="cpu",
                                                            progress=False))
            except Exception as err:
                raise QveditError(f"RAFT weights are not at {path} and could not be read or downloaded "
                                  f"({type(err).__name__}): copy {path.name} into {path.parent} from a machine "
                                  "with internet, or use flow=dis (no weights)") from None
            self.model = raft_large(weights=None, progress=False)
            self.model.load_state_dict(state)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = raft_large(weights=None, progress=False)
        self.model = self.model.to(device).eval().requires_grad_(False)

    MIN_SIDE = 128  # RAFT's correlation pyramid needs sides of at least 128 pixels

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        size = tuple(a.shape[-2:])
        a, b = enlarged(a, b, self.MIN_SIDE)
        height, width = a.shape[-2:]
        pad = (0, (-width) % 8, 0, (-height) % 8)  # and sides divisible by 8
        a, b = (F.pad(x.to(self.device) * 2 - 1, pad, mode="replicate") for x in (a, b))
        flow = self.model(a, b)[-1][..., :height, :width].float()
        return resize_flow(flow, size)


@dataclass
class FlowPair:
    """The flow from frame t back to frame t-1 at the frame size, and where it can be trusted."""

    backward: torch.Tensor  # (1, 2, H, W)
    valid: torch.Tensor  # (1, 1, H, W) float, 1 where not occluded


def warp_error(frame: torch.Tensor, previous: torch.Tensor, flow: FlowPair) -> float:
    """Lai et al. 2018's warp error of ``frame`` (1, 3, H, W) in [0, 1] against ``previous`` warped by
    the source flow: per-pixel squared RGB distance, averaged over the pixels that are not occluded."""
    warped = warp(previous.to(flow.backward.device), flow.backward)
    squared = (frame.to(warped.device) - warped).pow(2).sum(1, keepdim=True)
    return float((squared * flow.valid).sum() / flow.valid.sum().clamp(min=1))
