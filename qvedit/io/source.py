"""What the editor reads a clip from: the one protocol every frame source (folders, video, demo) follows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from PIL import Image

if TYPE_CHECKING:
    from qvedit.io.layout import RunLayout


@runtime_checkable
class FrameSource(Protocol):
    """An init frame and T-1 edge frames. Edge frame k is the edge map of output frame k+1.

    Sources read one frame at a time, so memory does not grow with T; reading edge frames in
    rising order is the cheap path (a video source decodes as a stream).
    """

    fps: float  # the clip's frame rate (previews and output video); 8.0 where the input has none
    has_source_frames: bool  # whether source_frame() can give the original frames (for optical flow)

    def init_image(self) -> Image.Image:
        """Frame 0 as 8-bit RGB."""

    def edge_frame(self, k: int, size: tuple[int, int]) -> Image.Image:
        """Edge frame k as 8-bit RGB, resized to ``size`` = (W, H)."""

    def source_frame(self, i: int, size: tuple[int, int]) -> Image.Image:
        """Original frame i (0..T-1) the edge maps were made from, 8-bit RGB at ``size`` = (W, H);
        only when ``has_source_frames``. Read in rising order."""

    def __len__(self) -> int:
        """The number of edge frames, T-1."""

    def finish(self, frame_paths: list[Path], layout: "RunLayout") -> list[Path]:
        """Whatever the source writes once every frame is done (an mp4); returns those files."""
