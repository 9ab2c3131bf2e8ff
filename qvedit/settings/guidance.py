"""``ttlg/`` and ``flow/``: the settings of test-time loss guidance and of the optical flow it and the
warp error use (what each key means: README, "Keys"); the work is done in ``qvedit.guidance``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from qvedit.fields import setting

EDGE_OPS = ("sobel", "laplacian")  # qvedit.guidance.edges implements each
VGG_WEIGHTS = ("imagenet", "random")  # the VGG16 of the Gram loss and of the metrics; random: tests and the demo
TEMPORAL_MODES = ("plain", "flow")
FLOW_METHODS = ("dis", "raft")  # OpenCV's DIS (no weights) and torchvision's RAFT-large
RAFT_WEIGHTS = ("pretrained", "random")  # the torch hub cache's checkpoint; random: tests only
GUIDANCE_DECODERS = ("vae", "tiny")
VGG_MIN_SIZE = 32  # VGG16 halves the image 3 times before relu4_3: 32 pixels leave 4x4 features


@dataclass
class TTLGSettings:
    """Which losses guide the latents, how hard, and at which denoising steps."""

    edge_scale: float = setting(0.0, frames=True, min=0)
    gram_scale: float = setting(0.0, frames=True, min=0)
    temporal_scale: float = setting(0.0, frames=True, min=0)
    color_scale: float = setting(0.0, frames=True, min=0)  # CIELAB mean/std against frame 0's (anchor colour target)
    lr: float = setting(0.05, frames=True, min=0)
    every: int = setting(1, frames=True, min=1)
    start_step: Optional[int] = setting(None, frames=True, min=0)
    end_step: Optional[int] = setting(None, frames=True, min=0)
    last_steps: Optional[int] = setting(10, frames=True, min=0)
    edge_size: Optional[int] = setting(256, frames=True, min=1)
    gram_size: Optional[int] = setting(256, frames=True, min=VGG_MIN_SIZE)
    temporal_size: int = setting(64, frames=True, min=1)
    # flow: the previous frame warped by the source flow
    temporal_mode: str = setting("plain", frames=True, choices=TEMPORAL_MODES)
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS)
    vgg_weights: str = setting("imagenet", frames=True, choices=VGG_WEIGHTS)
    # long side (pixels) x0 is decoded at for the losses: the latents are resized first; null = the frame's size
    decode_size: Optional[int] = setting(None, frames=True, min=16)
    decode_checkpointing: bool = setting(True)  # recomputes the decoder in the backward: the same numbers
    # what decodes x0 for the losses: the pipeline's VAE, or taehv's tiny decoder (qvedit/guidance/tiny_decoder.py)
    decoder: str = setting("vae", frames=True, choices=GUIDANCE_DECODERS)
    # ttlg.decoder=tiny: its weights (a taew2_1 .safetensors file, a folder, a hub id), or random (tests, timing)
    tiny_decoder: Optional[str] = setting(None, frames=True, path="input")

    @classmethod
    def scales(cls) -> list[str]:
        """The loss weights: every field named ``<loss>_scale``; a loss is on when its scale is > 0."""
        return [f.name for f in dataclasses.fields(cls) if f.name.endswith("_scale")]

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in self.scales())

    def guides_step(self, i: int, num_steps: int) -> bool:
        """Whether denoising step ``i`` (0-based, of ``num_steps``) takes a guidance step."""
        return (
            self.enabled
            and i % self.every == 0
            and (self.start_step is None or i >= self.start_step)
            and (self.end_step is None or i < self.end_step)
            and (self.last_steps is None or i >= num_steps - self.last_steps)
        )


@dataclass
class FlowSettings:
    """``flow/``: optical flow between consecutive source frames, for the warp error metric and
    ``ttlg.temporal_mode=flow``."""

    method: str = setting("dis", frames=True, choices=FLOW_METHODS)
    size: Optional[int] = setting(None, frames=True, min=16)  # long side the flow is computed at; null = frame size
    raft_weights: str = setting("pretrained", frames=True, choices=RAFT_WEIGHTS)
