"""``io/``: where a clip comes from and where its frames go (what each key means: README, "Keys").

Each option of the group is a dataclass here; ``qvedit.io.source.open_source(io, layout)`` gives the
``FrameSource`` the editor reads. ``first_frame/`` (frame 0 edited from the source's frame 0 before the
clip) is beside it: ``FirstFrameSettings``, run by ``qvedit.first_frame``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from qvedit.fields import setting
from qvedit.settings.guidance import EDGE_OPS

RESIZE_MODES = ("area", "nearest")  # qvedit.io.frames.RESAMPLING implements each
SHAPES_HELD_OUT_SEED = 1_000_000  # shapes clips of this seed and above are never in the toy model's training data
AUDIO_MODES = ("keep", "drop")  # io=video: the input's sound in the output mp4, or none


@dataclass
class FramesIO:
    """``io=frames``: an init frame and a folder of T-1 edge frames in, a frame folder out. With
    ``source_frames_dir`` (the original frames 0..T-1), frame 0 may be its first frame and the edge
    frames may be made from its frames 1.. (``edge_op``, saved in ``edges_dir``)."""

    init_frame: Optional[str] = setting(None, frames=True, path="input")
    edge_frames_dir: Optional[str] = setting(None, frames=True, path="input")
    out_frames_dir: Optional[str] = setting(None, path="output")
    resize: str = setting("area", frames=True, choices=RESIZE_MODES)
    source_frames_dir: Optional[str] = setting(None, frames=True, path="input")  # the original frames 0..T-1
    # edges made from source frames 1.. (no edge_frames_dir)
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS)
    edges_dir: Optional[str] = setting(None, path="output")


@dataclass
class DemoIO(FramesIO):
    """``io=demo``: the synthetic demo clip, made in its folder on first use."""


@dataclass
class LongDemoIO(DemoIO):
    """``io=demo_long``: the long synthetic clip (a pan while the light turns to sunset), made on first use."""

    length: int = setting(48, frames=True, min=2, max=10_000)  # output frames, frame 0 included


@dataclass
class ShapesIO(DemoIO):
    """``io=shapes``: a synthetic clip of shapes drawn from ``clip_seed`` (``qvedit.io.shapes``), made on first use.
    The toy model (``model=toy``) learnt from the clips of seeds below ``SHAPES_HELD_OUT_SEED`` and never saw these."""

    clip_seed: int = setting(SHAPES_HELD_OUT_SEED, frames=True, min=0, max=2**31 - 1)
    length: int = setting(24, frames=True, min=2, max=10_000)  # output frames, frame 0 included


@dataclass
class VideoIO:
    """``io=video``: video files in, an mp4 and a frame folder out."""

    rgb_video: Optional[str] = setting(None, frames=True, path="input")
    edge_video: Optional[str] = setting(None, frames=True, path="input")
    out_video: Optional[str] = setting(None, path="output")
    out_frames_dir: Optional[str] = setting(None, path="output")
    resize: str = setting("area", frames=True, choices=RESIZE_MODES)
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS)
    edges_dir: Optional[str] = setting(None, path="output")
    keep_frames: bool = setting(True)
    audio: str = setting("keep", choices=AUDIO_MODES)  # the rgb video's sound, cut to the frames made


IO_OPTIONS = (FramesIO, DemoIO, LongDemoIO, ShapesIO, VideoIO)


@dataclass
class FirstFrameSettings:
    """``first_frame/``: frame 0 made inside qvedit, an instruction edit of the source's frame 0 on the
    loaded pipeline before the clip (``qvedit.first_frame``); ``prompt`` null = frame 0 as given.

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

    def conflict(self) -> Optional[str]:
        """Why these keys do not go together (one line), or None."""
        if self.prompt is None:
            used = [f"first_frame.{f.name}={str(getattr(self, f.name)).lower()}" for f in dataclasses.fields(self)
                    if f.name in ("candidates", "pick", "only") and getattr(self, f.name) != f.default]
            if used:
                return (f"{', '.join(used)} without first_frame.prompt: give the instruction that edits frame 0 "
                        "(first_frame.prompt=\"make it a watercolour painting\"), or leave "
                        f"{'these' if len(used) > 1 else 'it'} out")
            return None
        if not self.prompt.strip():
            return ("first_frame.prompt is empty: give the instruction that edits frame 0 "
                    "(first_frame.prompt=\"make it a watercolour painting\"), or null to keep frame 0 as given")
        if self.pick >= self.candidates:
            return (f"first_frame.pick={self.pick} but first_frame.candidates={self.candidates} makes candidates "
                    f"0..{self.candidates - 1}: pick one of them, or raise first_frame.candidates to {self.pick + 1} "
                    "or more")
        return None
