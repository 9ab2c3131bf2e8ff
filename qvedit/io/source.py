"""What the editor reads a clip from: the one protocol every frame source (folders, video, demo) follows,
and ``open_source``, which gives the source an ``io/`` option's settings describe."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Union, runtime_checkable

from PIL import Image

from qvedit.io.demo import demo_clip, shapes_clip
from qvedit.io.frames import FrameFolders
from qvedit.io.layout import RunLayout
from qvedit.io.video import VideoClip
from qvedit.settings.io import DemoIO, FramesIO, LongDemoIO, ShapesIO, VideoIO

IOSettings = Union[FramesIO, VideoIO]  # an io/ option: FramesIO, DemoIO, LongDemoIO, ShapesIO or VideoIO


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


def open_source(io: IOSettings, layout: RunLayout) -> FrameSource:
    """The clip an ``io/`` option's settings describe, its inputs checked (files there, frames readable).

    Args:
        io: ``io=frames`` / ``demo`` / ``demo_long`` / ``video``'s settings.
        layout: the run's layout; edge maps made from source frames are saved in ``layout.edges_dir``.

    Returns:
        The ``FrameSource`` the editor reads.
    """
    if isinstance(io, VideoIO):
        return VideoClip(io, edges_dir=layout.edges_dir)
    if isinstance(io, ShapesIO):
        return shapes_clip(io.init_frame, io.edge_frames_dir, io.resize, io.source_frames_dir, io.clip_seed, io.length)
    if isinstance(io, LongDemoIO):
        return demo_clip(io.init_frame, io.edge_frames_dir, io.resize, io.source_frames_dir, io.length)
    if isinstance(io, DemoIO):
        return demo_clip(io.init_frame, io.edge_frames_dir, io.resize, io.source_frames_dir)
    return FrameFolders(io.init_frame, io.edge_frames_dir, io.resize, io.source_frames_dir, edge_op=io.edge_op,
                        edges_dir=layout.edges_dir)
