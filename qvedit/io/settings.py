"""``io/``: where a clip comes from and where its frames go (what each key means: README, "Keys").

Each option of the group is a dataclass here; ``open(layout)`` gives the ``FrameSource`` the editor
reads (``qvedit.io.source``), importing the code that reads files only when it is called.
``first_frame/`` (frame 0 edited from the source's frame 0 before the clip) is beside it:
``FirstFrameSettings``, run by ``qvedit.io.first_frame``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from qvedit.errors import QveditError
from qvedit.fields import check_fields, setting
from qvedit.guidance.settings import EDGE_OPS

if TYPE_CHECKING:
    from qvedit.io.layout import RunLayout
    from qvedit.io.source import FrameSource

RESIZE_MODES = ("area", "nearest")  # qvedit.io.frames.RESAMPLING implements each


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise QveditError(f"io.resize={resize!r} is not supported: use one of {', '.join(RESIZE_MODES)}")


def check_edge_op(edge_op: str) -> None:
    if edge_op not in EDGE_OPS:
        raise QveditError(f"io.edge_op={edge_op!r} (for edges made from the source frames) is not supported: use one "
                          f"of {', '.join(sorted(EDGE_OPS))}")


@dataclass
class FramesIO:
    """``io=frames``: an init frame and a folder of T-1 edge frames in, a frame folder out. With
    ``source_frames_dir`` (the original frames 0..T-1), frame 0 may be its first frame and the edge
    frames may be made from its frames 1.. (``edge_op``, saved in ``edges_dir``)."""

    init_frame: Optional[str] = setting(None, frames=True, path="input")
    edge_frames_dir: Optional[str] = setting(None, frames=True, path="input")
    out_frames_dir: Optional[str] = setting(None, path="output")
    resize: str = setting("area", frames=True)
    source_frames_dir: Optional[str] = setting(None, frames=True, path="input")  # the original frames 0..T-1
    edge_op: str = setting("sobel", frames=True)  # edges made from source frames 1.. (no edge_frames_dir)
    edges_dir: Optional[str] = setting(None, path="output")

    def open(self, layout: "RunLayout") -> "FrameSource":
        from qvedit.io.frames import FrameFolders

        return FrameFolders(self.init_frame, self.edge_frames_dir, self.resize, self.source_frames_dir,
                            edge_op=self.edge_op, edges_dir=layout.edges_dir)


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


@dataclass
class FirstFrameSettings:
    """``first_frame/``: frame 0 made inside qvedit, an instruction edit of the source's frame 0 on the
    loaded pipeline before the clip (``qvedit.io.first_frame``); ``prompt`` null = frame 0 as given.

    The defaults are the model's own single-image edit settings (Qwen-Image-Edit-2509's example in the
    QwenLM/Qwen-Image README: 40 steps, true CFG 4, negative prompt " "); ``experiment=lightning`` sets
    the Lightning ones. Candidate k is seeded from (``seed``, k) alone, so ``candidates`` changes no frame;
    ``only`` stops before the clip and changes none either.
    """

    prompt: Optional[str] = setting(None, frames=True)
    num_inference_steps: int = setting(40, frames=True, min=1, max=1000)
    true_cfg_scale: float = setting(4.0, frames=True, min=0)
    negative_prompt: str = setting(" ", frames=True)
    candidates: int = setting(1, min=1, max=64)
    pick: int = setting(0, frames=True, min=0, max=63)
    only: bool = setting(False)

    def __post_init__(self):
        check_fields(self, "first_frame.")
        if self.prompt is None:
            used = [f"first_frame.{f.name}={str(getattr(self, f.name)).lower()}" for f in dataclasses.fields(self)
                    if f.name in ("candidates", "pick", "only") and getattr(self, f.name) != f.default]
            if used:
                raise QveditError(f"{', '.join(used)} without first_frame.prompt: give the instruction that edits "
                                  "frame 0 (first_frame.prompt=\"make it a watercolour painting\"), or leave "
                                  f"{'these' if len(used) > 1 else 'it'} out")
            return
        if not self.prompt.strip():
            raise QveditError("first_frame.prompt is empty: give the instruction that edits frame 0 "
                              "(first_frame.prompt=\"make it a watercolour painting\"), or null to keep frame 0 as given")
        if self.pick >= self.candidates:
            raise QveditError(f"first_frame.pick={self.pick} but first_frame.candidates={self.candidates} makes "
                              f"candidates 0..{self.candidates - 1}: pick one of them, or raise first_frame.candidates "
                              f"to {self.pick + 1} or more")
