"""The optical flow of a clip: between its consecutive source frames, one frame pair at a time.

The estimators, warping and the occlusion check are ``qvedit.guidance.optical_flow``'s; this module reads the
frames they run on from the clip (``FrameSource.source_frame``, or the edge maps where there are no
source frames).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image

from qvedit.core.images import to_tensor
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.guidance.optical_flow import DISFlow, FlowPair, RAFTFlow, occluded, resize_flow
from qvedit.io.source import FrameSource
from qvedit.settings.guidance import FlowSettings

log = logging.getLogger(__name__)


class ClipFlow:
    """Flow between consecutive source frames of a clip, computed once per frame pair.

    Source frames are the original frames the edge maps came from (``FrameSource.source_frame``).
    Without them the flow is estimated between consecutive edge maps (frame 0's edge map is the Sobel
    edges of frame 0), which is rougher; ``from_edges`` says which.
    """

    def __init__(self, settings: FlowSettings, source: FrameSource, size: tuple[int, int],
                 device: torch.device):
        """size: (W, H) of the clip's frames."""
        self.settings = settings
        self.source = source
        self.size = size
        self.device = device
        self.from_edges = not source.has_source_frames
        self.estimate = DISFlow() if settings.method == "dis" else RAFTFlow(settings.raft_weights, device)
        if self.from_edges:
            log.warning("no source frames (the original frames the edge maps came from): optical flow is "
                        "estimated between consecutive edge maps; set io.source_frames_dir for better flow")
        self._last: Optional[tuple[int, torch.Tensor]] = None

    def frame(self, t: int, edge: Optional[Image.Image] = None) -> torch.Tensor:
        """(1, 3, h, w) in [0, 1]: what the flow of frame t is computed on, at the flow size. ``edge``:
        frame t's edge map when the caller has read it already (a video is not decoded twice)."""
        if self._last is not None and self._last[0] == t:
            return self._last[1]
        if not self.from_edges:
            image = self.source.source_frame(t, self.size)
        elif t == 0:
            image = Image.fromarray(edges_to_uint8(sobel_edges(to_tensor(self.source.init_image())))).convert("RGB")
        else:
            image = edge if edge is not None else self.source.edge_frame(t - 1, self.size)
        tensor = to_tensor(image).to(self.device)
        if self.settings.size and max(tensor.shape[-2:]) > self.settings.size:
            scale = self.settings.size / max(tensor.shape[-2:])
            small = (max(8, round(tensor.shape[-2] * scale)), max(8, round(tensor.shape[-1] * scale)))
            tensor = F.interpolate(tensor, size=small, mode="area")
        self._last = (t, tensor)
        return tensor

    def pair(self, t: int, edge: Optional[Image.Image] = None) -> FlowPair:
        """The flow of frame t (t >= 1) back to frame t-1, at the clip's frame size (``edge``: see ``frame``)."""
        before, now = self.frame(t - 1), self.frame(t, edge)
        backward, forward = self.estimate(now, before), self.estimate(before, now)
        valid = (~occluded(backward, forward)).float()
        full = (self.size[1], self.size[0])
        backward = resize_flow(backward, full)
        valid = (F.interpolate(valid, size=full, mode="bilinear", align_corners=False) > 0.5).float()
        return FlowPair(backward, valid)
