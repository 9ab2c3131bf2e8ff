"""``anchor/``: what holds a long clip to frame 0 (keys: docs/configuration.md and docs/long-clips.md).

Every frame is an edit of the frame before it, so a clip is a chain of edits, and chains drift (colours, detail,
a creeping shift). Each defence here is off by default and changes the frames (a frame setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting

# "Deform image 2 into the fine shape outlined by image 1, keeping the appearance of image 3 (its colours,
# textures and style), and output one image": image 1 = edge map, image 2 = previous frame, image 3 = frame 0.
THREE_IMAGE_PROMPT = "将图 2 按图 1 所勾勒出的精致形状进行变形，并保持图 3 的外观（颜色、质感与风格），生成一张图像输出"
COLOR_MODES = ("none", "mean_std", "histogram")  # qvedit.anchor.color implements each


@dataclass
class AnchorSettings:
    """The drift defences: frame 0 as a third image, keyframes made from frame 0, colours held to frame 0's."""

    first_frame_image: bool = setting(False, frames=True, help=(
        "frame 0 goes to the pipeline as a third image: `image=[edge_k, frame k, frame 0]`, with "
        "`anchor.prompt`"))
    prompt: str = setting(THREE_IMAGE_PROMPT, frames=True, help=(
        "the prompt of the three-image call (\"deform image 2 into the shape outlined by image 1, keeping the "
        "appearance of image 3: its colours, textures and style\"); used only with `anchor.first_frame_image`"))
    every: Optional[int] = setting(None, frames=True, min=1, help=(
        "every N-th frame (N, 2N, ...) is made from frame 0 instead of the frame before it; null = never"))
    color: str = setting("none", frames=True, choices=COLOR_MODES, help=(
        "each generated frame's colours moved toward frame 0's before it is written and followed: `mean_std` "
        "(CIELAB mean and deviation) or `histogram` (per RGB channel, scikit-image)"))
    color_strength: float = setting(1.0, frames=True, min=0, max=1, help=(
        "with `anchor.color`: 0 = unchanged, 1 = matched (in between: that share of the way)"))

    def from_first_frame(self, index: int) -> bool:
        """Whether frame ``index`` (>= 1) is made from frame 0 instead of the frame before it."""
        return self.every is not None and index % self.every == 0

    def hops(self, index: int) -> int:
        """Edits between frame 0 and frame ``index`` of a chain (``metrics.csv``'s ``hops``): ``index``, or fewer
        from the first frame made from frame 0 on (``every``)."""
        if self.every is None or index < self.every:
            return index
        return index % self.every + 1

    def condition_images(self, index: int, edge, previous, first):
        """The pipeline's ``image`` list for frame ``index``: [edge map, the frame it follows] and, with
        ``first_frame_image``, frame 0 as the third image."""
        follows = first if self.from_first_frame(index) else previous
        return [edge, follows, first] if self.first_frame_image else [edge, follows]

    def prompt_for(self, two_image_prompt: str) -> str:
        """The prompt of the call: the run's own for two images, ``anchor.prompt`` for three."""
        return self.prompt if self.first_frame_image else two_image_prompt

    @property
    def corrects_color(self) -> bool:
        return self.color != "none" and self.color_strength > 0

    def describe(self) -> Optional[str]:
        """What holds the clip to frame 0, in words (the summary and the top of report.html); None when nothing."""
        held = []
        if self.corrects_color:
            strength = f", anchor.color_strength={self.color_strength:g}" if self.color_strength != 1 else ""
            held.append(f"each frame's colours moved to frame 0's (anchor.color={self.color}{strength})")
        if self.first_frame_image:
            held.append("frame 0 as a third condition image (anchor.first_frame_image=true)")
        if self.every is not None:
            held.append(f"frames {self.every}, {2 * self.every}, ... made from frame 0 (anchor.every={self.every})")
        return "anchor: " + "; ".join(held) if held else None
