"""``io/``: where a clip comes from and where its frames go (what each key means: README, "Keys").

Each option of the group is a dataclass here; ``open(layout)`` gives the ``FrameSource`` the editor
reads (``qvedit.io.source``), importing the code that reads files only when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from qvedit.errors import QveditError
from qvedit.fields import setting

if TYPE_CHECKING:
    from qvedit.io.layout import RunLayout
    from qvedit.io.source import FrameSource

RESIZE_MODES = ("area", "nearest")  # qvedit.io.frames.RESAMPLING implements each


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise QveditError(f"io.resize={resize!r} is not supported: use one of {', '.join(RESIZE_MODES)}")


@dataclass
class FramesIO:
    """``io=frames``: an init frame and a folder of T-1 edge frames in, a frame folder out."""

    init_frame: Optional[str] = setting(None, frames=True, path="input")
    edge_frames_dir: Optional[str] = setting(None, frames=True, path="input")
    out_frames_dir: Optional[str] = setting(None, path="output")
    resize: str = setting("area", frames=True)
    source_frames_dir: Optional[str] = setting(None, frames=True, path="input")  # the original frames 0..T-1

    def open(self, layout: "RunLayout") -> "FrameSource":
        from qvedit.io.frames import FrameFolders

        return FrameFolders(self.init_frame, self.edge_frames_dir, self.resize, self.source_frames_dir)


@dataclass
class DemoIO(FramesIO):
    """``io=demo``: the synthetic demo clip, made in its folder on first use."""

    def open(self, layout: "RunLayout") -> "FrameSource":
        from qvedit.io.demo import demo_clip

        return demo_clip(self.init_frame, self.edge_frames_dir, self.resize, self.source_frames_dir)


@dataclass
class LongDemoIO(DemoIO):
    """``io=demo_long``: the long synthetic clip (a pan while the light turns to sunset), made on first use."""

    length: int = setting(48, frames=True, min=2, max=10_000)  # output frames, frame 0 included

    def open(self, layout: "RunLayout") -> "FrameSource":
        from qvedit.io.demo import demo_clip

        return demo_clip(self.init_frame, self.edge_frames_dir, self.resize, self.source_frames_dir, self.length)


@dataclass
class VideoIO:
    """``io=video``: video files in, an mp4 and a frame folder out."""

    rgb_video: Optional[str] = setting(None, frames=True, path="input")
    edge_video: Optional[str] = setting(None, frames=True, path="input")
    out_video: Optional[str] = setting(None, path="output")
    out_frames_dir: Optional[str] = setting(None, path="output")
    resize: str = setting("area", frames=True)
    edge_op: str = setting("sobel", frames=True)
    edges_dir: Optional[str] = setting(None, path="output")
    keep_frames: bool = setting(True)

    def open(self, layout: "RunLayout") -> "FrameSource":
        from qvedit.io.video import VideoClip

        return VideoClip(self, edges_dir=layout.edges_dir)


IO_OPTIONS = (FramesIO, DemoIO, LongDemoIO, VideoIO)
