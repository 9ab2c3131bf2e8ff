"""``ttlg/`` and ``flow/``: the settings of test-time loss guidance and of the optical flow it and the
warp error use (keys: docs/configuration.md); the work is done in ``qvedit.guidance``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting

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

    edge_scale: float = setting(0.0, frames=True, min=0, flag="--ttlg_edge_scale", help=(
        "weight of the edge loss; > 0 enables"))
    gram_scale: float = setting(0.0, frames=True, min=0, flag="--ttlg_gram_scale", help=(
        "weight of the VGG16 Gram style loss against frame 0; > 0 enables"))
    temporal_scale: float = setting(0.0, frames=True, min=0, flag="--ttlg_temporal_scale", help=(
        "weight of the L1 loss to the previous frame; > 0 enables. Without optical-flow alignment it pulls "
        "moving things back to where they were: **it can smear motion**"))
    color_scale: float = setting(0.0, frames=True, min=0, help=(
        "weight of the colour loss: the decoded x0's CIELAB mean and deviation against frame 0's (the target "
        "of `anchor.color`); > 0 enables"))  # CIELAB mean/std against frame 0's (anchor colour target)
    lr: float = setting(0.05, frames=True, min=0, flag="--ttlg_lr", help=(
        "step size per guided step (RMS change per latent element: [Test-time loss guidance](guidance.md))"))
    every: int = setting(1, frames=True, min=1, flag="--ttlg_every", help="guide every N-th step")
    start_step: Optional[int] = setting(None, frames=True, min=0, flag="--ttlg_start_step", help=(
        "guide only steps i >= start_step (0-based)"))
    end_step: Optional[int] = setting(None, frames=True, min=0, flag="--ttlg_end_step", help=(
        "guide only steps i < end_step"))
    last_steps: Optional[int] = setting(10, frames=True, min=0, flag="--ttlg_last_steps", help=(
        "guide only the last N steps; null = all"))
    edge_size: Optional[int] = setting(256, frames=True, min=1, flag="--ttlg_edge_size", help=(
        "long side the edge loss is computed at (never upsamples); null = generation size"))
    gram_size: Optional[int] = setting(256, frames=True, min=VGG_MIN_SIZE, flag="--ttlg_gram_size", help=(
        "long side of the VGG input; null = generation size"))
    temporal_size: int = setting(64, frames=True, min=1, help="long side of the temporal comparison")
    temporal_mode: str = setting("plain", frames=True, choices=TEMPORAL_MODES, help=(
        "`plain`: the temporal loss compares with the previous frame as it is; `flow`: with the previous "
        "frame moved along the source frames' optical flow, occlusions left out"))
    edge_op: str = setting("sobel", frames=True, choices=EDGE_OPS, help=(
        "the soft edges the edge loss compares with the edge frame: `sobel` or `laplacian`"))
    vgg_weights: str = setting("imagenet", frames=True, choices=VGG_WEIGHTS, help=(
        "VGG16 backbone of the Gram loss: `imagenet`, or `random` (tests only)"))
    decode_size: Optional[int] = setting(None, frames=True, min=16, help=(
        "long side (pixels) x0 is decoded at for the losses (the latents are resized first): a cheaper guided"
        " step; null = the frame's size (cost: [Guidance decode cost](guidance.md#guidance-decode-cost))"))
    decode_checkpointing: bool = setting(True, help=(
        "checkpoint the VAE decoder in the guidance backward pass (memory: [Guidance decode "
        "cost](guidance.md#guidance-decode-cost))"))  # recomputes the decoder in the backward: the same numbers
    decoder: str = setting("vae", frames=True, choices=GUIDANCE_DECODERS, help=(
        "what decodes x0 for the losses: `vae` (the pipeline's own decode) or `tiny` (taehv's tiny decoder "
        "for Qwen-Image's latents, [A tiny guidance "
        "decoder](guidance.md#a-tiny-guidance-decoder-ttlgdecodertiny))"))
    tiny_decoder: Optional[str] = setting(None, frames=True, path="input", help=(
        "`ttlg.decoder=tiny`: its weights, a `taew2_1.safetensors` file, a folder holding it, or a hub file "
        "`owner/name[/file]`; `random` for tests and timing"))

    @classmethod
    def scales(cls) -> list[str]:
        """The loss weights: every field named ``<loss>_scale``; a loss is on when its scale is > 0."""
        return [f.name for f in dataclasses.fields(cls) if f.name.endswith("_scale")]

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in self.scales())

    def turned_off(self) -> "TTLGSettings":
        """The unguided twin's guidance: every key at its default (so the twin does not depend on how guidance was
        set) but ``vgg_weights`` (what the run has of VGG's weights)."""
        return TTLGSettings(vgg_weights=self.vgg_weights)

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

    method: str = setting("dis", frames=True, choices=FLOW_METHODS, help=(
        "optical flow between consecutive source frames: `dis` (OpenCV, no weights, CPU) or `raft` "
        "(torchvision RAFT-large, GPU when there is one)"))
    size: Optional[int] = setting(None, frames=True, min=16, help=(
        "long side the flow is computed at (vectors scaled back); null = the frame size"))
    raft_weights: str = setting("pretrained", frames=True, choices=RAFT_WEIGHTS, help=(
        "`flow=raft`: `pretrained` (torch hub cache) or `random` (tests only)"))
