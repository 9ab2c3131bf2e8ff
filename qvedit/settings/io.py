"""``io/``: where a clip comes from and where its frames go (keys: docs/configuration.md).

Each option of the group is a dataclass here; ``qvedit.io.source.open_source(io, layout)`` gives the
``FrameSource`` the editor reads. ``first_frame/`` (frame 0 edited from the source's frame 0 before the
clip) has its own module, ``qvedit.settings.first_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting
from qvedit.settings.guidance import EDGE_OPS

RESIZE_MODES = ("area", "nearest")  # qvedit.io.frames.RESAMPLING implements each
SHAPES_HELD_OUT_SEED = 1_000_000  # shapes clips of this seed and above are never in the toy model's training data
AUDIO_MODES = ("keep", "drop")  # io=video: the input's sound in the output mp4, or none


@dataclass
class FramesIO:
    """``io=frames``: an init frame and a folder of T-1 edge frames in, a frame folder out. With
    ``source_frames_dir`` (the original frames 0..T-1), frame 0 may be its first frame and the edge
    frames may be made from its frames 1.. (``edge_op``, saved in ``edges_dir``)."""

    init_frame: Optional[str] = setting(None, frames=True, path="input", flag="--init_frame", help=(
        "frame 0 (with `first_frame.prompt`: the frame 0 to edit); null with `io.source_frames_dir` = its "
        "first frame"))
    edge_frames_dir: Optional[str] = setting(None, frames=True, path="input", flag="--edge_frames_dir", help=(
        "the T-1 edge frames; null with `io.source_frames_dir` = made from its frames 1.. (`io.edge_op`)"))
    out_frames_dir: Optional[str] = setting(None, path="output", flag="--out_frames_dir", help=(
        "where the output frames are written; null = `<run dir>/frames`"))
    resize: str = setting("area", frames=True, choices=RESIZE_MODES, help=(
        "how edge frames are resized to the init size: `area` or `nearest`"))
    source_frames_dir: Optional[str] = setting(None, frames=True, path="input", help=(
        "`io=frames`: the original frames 0..T-1 the edge maps were made from (frame 0's size), for optical "
        "flow and the colour target; alone, frame 0 and the edge maps come from it; null = flow from the edge"
        " maps, colour target frame 0's own"))
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS, help=(
        "operator (`sobel` or `laplacian`) for edges made from `io.rgb_video` (`io=video`) or "
        "`io.source_frames_dir` (`io=frames`)"))
    edges_dir: Optional[str] = setting(None, path="output", help=(
        "where made edges are saved; null = `<run dir>/edges`"))


@dataclass
class DemoIO(FramesIO):
    """``io=demo``: the synthetic demo clip, made in its folder on first use."""


@dataclass
class LongDemoIO(DemoIO):
    """``io=demo_long``: the long synthetic clip (a pan while the light turns to sunset), made on first use."""

    length: int = setting(48, frames=True, min=2, max=10_000, help=(
        "frames of the long synthetic clip (a pan while the light turns to sunset), frame 0 included"))


@dataclass
class ShapesIO(DemoIO):
    """``io=shapes``: a synthetic clip of shapes drawn from ``clip_seed`` (``qvedit.io.shapes``), made on first use.
    The toy model (``model=toy``) learnt from the clips of seeds below ``SHAPES_HELD_OUT_SEED`` and never saw these."""

    clip_seed: int = setting(SHAPES_HELD_OUT_SEED, frames=True, min=0, max=2**31 - 1, help=(
        "`io=shapes`: which clip of shapes; from 1000000 on (the default) clips the toy model never saw in "
        "training, below it its training clips"))
    length: int = setting(24, frames=True, min=2, max=10_000, help=(
        "frames of the clip of shapes, frame 0 included"))


@dataclass
class VideoIO:
    """``io=video``: video files in, an mp4 and a frame folder out."""

    rgb_video: Optional[str] = setting(None, frames=True, path="input", flag="--rgb_video", help=(
        "`io=video`: the input video; its first frame is frame 0"))
    edge_video: Optional[str] = setting(None, frames=True, path="input", flag="--edge_video", help=(
        "`io=video`: T-1 edge frames; null = made from `io.rgb_video`"))
    out_video: Optional[str] = setting(None, path="output", flag="--out_video", help=(
        "`io=video`: the output mp4; null = `<run dir>/output.mp4`"))
    out_frames_dir: Optional[str] = setting(None, path="output", flag="--out_frames_dir", help=(
        "where the output frames are written; null = `<run dir>/frames`"))
    resize: str = setting("area", frames=True, choices=RESIZE_MODES, help=(
        "how edge frames are resized to the init size: `area` or `nearest`"))
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS, help=(
        "operator (`sobel` or `laplacian`) for edges made from `io.rgb_video` (`io=video`) or "
        "`io.source_frames_dir` (`io=frames`)"))
    edges_dir: Optional[str] = setting(None, path="output", help=(
        "where made edges are saved; null = `<run dir>/edges`"))
    keep_frames: bool = setting(True, help="`io=video`: false deletes the PNG frames once the mp4 is written")
    audio: str = setting("keep", choices=AUDIO_MODES, help=(
        "`io=video`: `keep` gives the mp4 the sound of `io.rgb_video`, cut to the frames made (copied without"
        " re-encoding where an mp4 holds its codec, else AAC); `drop`: no sound"))


IO_OPTIONS = (FramesIO, DemoIO, LongDemoIO, ShapesIO, VideoIO)


