"""``start/``: how each frame's denoising starts (keys: docs/configuration.md and docs/long-clips.md);
the work is done in ``qvedit.start``.

``noise`` is the noise a frame starts from: its own (``independent``, today's frames byte for byte), one tensor for
the whole run (``shared``), or frame k-1's carried along the clip's optical flow (``warped``). ``strength`` below 1
starts frame k part-way down the schedule from the previous output frame warped onto it, mixed with that noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting

NOISE_KINDS = ("independent", "shared", "warped")  # qvedit.start.noise makes each


@dataclass
class StartSettings:
    """Where each frame's denoising begins: which noise, and how far down the schedule."""

    noise: str = setting("independent", frames=True, choices=NOISE_KINDS, help=(
        "the noise each frame starts from: `independent` (its own, from (seed, frame): the frames of qvedit "
        "before this key, byte for byte), `shared` (one for the whole run), `warped` (frame k-1's carried "
        "along the clip's optical flow, kept white Gaussian noise); see [Frames tied together where they are "
        "made](long-clips.md#frames-tied-together-where-they-are-made-start)"))
    strength: float = setting(1.0, frames=True, min=0, max=1, help=(
        "in (0, 1]: 1 = every step from noise; below 1 = each frame runs only the last floor(strength x "
        "`num_inference_steps`) steps, starting from the previous output frame warped onto it by the flow and"
        " noised to the schedule's sigma there (`ttlg.last_steps`, `start_step`, `end_step` and `every` count"
        " over the steps run); too low for one step is refused, naming the smallest that works"))

    def steps_run(self, num_steps: int) -> int:
        """How many of the schedule's ``num_steps`` steps a frame runs: the last ``floor(strength * num_steps)``
        (a hair of slack, so that 0.29 * 100 counts as 29 steps as a user reads it)."""
        return min(num_steps, math.floor(self.strength * num_steps + 1e-9))

    @property
    def from_previous(self) -> bool:
        """Whether a frame starts from the warped previous output (strength below 1) instead of pure noise."""
        return self.strength < 1

    @property
    def needs_flow(self) -> bool:
        """Whether the clip's optical flow is needed: to warp the noise, or the previous frame."""
        return self.noise == "warped" or self.from_previous

    @property
    def is_default(self) -> bool:
        """Independent noise from sigma 1: the pipeline makes each frame's noise itself, as before this group."""
        return self.noise == "independent" and not self.from_previous

    def problem(self, num_steps: int) -> Optional[str]:
        """Why ``strength`` cannot run at ``num_steps`` (one line), or None: it must leave at least one step."""
        if self.steps_run(num_steps) >= 1:
            return None
        smallest = math.ceil(10_000 / num_steps) / 10_000  # 1/num_steps, rounded up to what still gives one step
        return (f"start.strength={self.strength} leaves no denoising step of num_inference_steps={num_steps} (a frame "
                f"runs the last floor(strength x steps) of them): the smallest strength that works here is "
                f"{smallest:g} (one step, the schedule's last), or raise num_inference_steps")

    def schedule_problem(self, segments: bool) -> Optional[str]:
        """Why this start cannot run with ``schedule=segments`` (one line), or None. Warped noise and a start from
        the previous frame are carried along one chain; a segment's frames would need them carried from its
        keyframe, which is not built yet."""
        if not segments or self.is_default:
            return None
        return (f"start.noise={self.noise} start.strength={self.strength:g} ties each frame to the one before along "
                f"one chain, and schedule=segments makes the clip in separate segments: use schedule=chain with this "
                f"start, or start=fresh with schedule=segments")
