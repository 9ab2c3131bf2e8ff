"""The arithmetic of a segment schedule: keyframes, segments, what each frame is made from and what it depends on.

With K = ``schedule.keyframe_every`` and T frames (0..T-1):

- keyframes K, 2K, ... < T: ``image=[edge, frame 0]`` (``keyframes_from=first``: one edit from frame 0 each), or
  ``image=[edge, keyframe (j-1)K, frame 0]`` (``previous_keyframe``: a chain with stride K; keyframe K, which has no
  keyframe before it, is made from frame 0 alone);
- segment j, frames jK+1 .. min((j+1)K, T)-1: a chain from keyframe jK (frame 0 for j = 0), ``image=[edge, frame
  before]``; its last ``meet_frames`` frames get the next keyframe as image 3, where there is one (the last
  segment ends the clip without one); with ``anchor.first_frame_image`` (and ``meet_frames=0``) frame 0 is image 3,
  and on a model that takes four images (Qwen-Image 2.1) frame 0 is image 4 of the frames meeting a keyframe.

Calls of three or four images use ``anchor.prompt`` ("keep the appearance of image 3"), two-image calls the run's
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.settings.schedule import ScheduleSettings


@dataclass(frozen=True)
class Recipe:
    """How one frame is made: the frame it follows (image 2) and the optional image 3."""

    index: int
    follows: int  # image 2: the frame before (segments) or frame 0 / the previous keyframe (keyframes)
    third: Optional[int]  # image 3: frame 0, the previous keyframe's frame 0, or the next keyframe; None = two images
    keyframe: bool  # keyframes are made before the frame before them: no temporal term, no row against it yet
    fourth: Optional[int] = None  # image 4: frame 0 beside the next keyframe (a model taking four images)

    @property
    def anchors(self) -> tuple[int, ...]:
        """The frames after the one it follows: images 3 and 4."""
        return tuple(i for i in (self.third, self.fourth) if i is not None)

    @property
    def depends_on(self) -> tuple[int, ...]:
        """The frames (other than frame 0, which is always there) that must be finished before this one."""
        return tuple(sorted({i for i in (self.follows, self.third, self.fourth) if i}))


class SegmentPlan:
    """The keyframes and segments of a clip of ``total`` frames (frame 0 included)."""

    def __init__(self, settings: ScheduleSettings, total: int, first_frame_image: bool = False, max_images: int = 3):
        """``max_images``: the condition images one call of the model takes (its family's)."""
        self.every, self.total, self.max_images = settings.keyframe_every, total, max_images
        self.from_previous = settings.keyframes_from == "previous_keyframe"
        self.meet_frames, self.first_frame_image = settings.meet_frames, first_frame_image
        self.keyframes = list(range(self.every, total, self.every))

    def is_keyframe(self, index: int) -> bool:
        return index > 0 and index % self.every == 0

    def segment(self, index: int) -> int:
        """The segment frame ``index`` belongs to (j for frames jK+1 .. (j+1)K-1; a keyframe starts segment j)."""
        return index // self.every

    def segment_frames(self, segment: int) -> range:
        """The frames of ``segment``, after its keyframe."""
        start = segment * self.every
        return range(start + 1, min(start + self.every, self.total))

    def frames_left(self, index: int) -> int:
        """How many frames of its segment are still to make from frame ``index`` on (itself included): a segment
        frame's place in its chain, counted from the end."""
        return min((index // self.every + 1) * self.every, self.total) - index

    @property
    def segments(self) -> int:
        return (self.total - 1) // self.every + 1

    def next_keyframe(self, index: int) -> Optional[int]:
        """The keyframe the segment of ``index`` runs into; None for the last segment."""
        following = (index // self.every + 1) * self.every
        return following if following < self.total else None

    def recipe(self, index: int) -> Recipe:
        """What frame ``index`` (1..T-1) is made from."""
        if self.is_keyframe(index):
            if self.from_previous and index > self.every:
                return Recipe(index, index - self.every, 0, True)
            return Recipe(index, 0, None, True)
        meets = self.next_keyframe(index)
        if meets is not None and index >= meets - self.meet_frames:
            beside = 0 if self.first_frame_image and self.max_images >= 4 else None  # frame 0 as image 4
            return Recipe(index, index - 1, meets, False, beside)
        return Recipe(index, index - 1, 0 if self.first_frame_image else None, False)

    def hops(self, index: int) -> int:
        """Edits between frame 0 and frame ``index``: a keyframe's own (1, or j for keyframe jK made from the
        previous keyframe), plus one per frame of its segment."""
        if index == 0:
            return 0
        if self.is_keyframe(index):
            return index // self.every if self.from_previous else 1
        start = index - index % self.every
        return self.hops(start) + index - start

    def seam_before(self, keyframe: int) -> int:
        """The seam of ``keyframe``: the last frame of the segment before it, where that chain meets the keyframe."""
        return keyframe - 1

    def kept(self, finished: set[int]) -> set[int]:
        """Of the ``finished`` frames (on disk with their metrics rows), those a resumed run keeps: every frame
        whose frames it was made from are kept too (frame 0 always is). A frame made from one made again is
        made again, as in a chain."""
        kept = {0}
        for index in [*self.keyframes, *(i for i in range(1, self.total) if not self.is_keyframe(i))]:
            if index in finished and all(d in kept for d in self.recipe(index).depends_on):
                kept.add(index)
        return kept - {0}

    def describe(self) -> str:
        """``keyframes 16, 32 (every 16, from frame 0); 3 segments of up to 15 frames, the last 2 meeting the next
        keyframe``"""
        shown = ", ".join(map(str, self.keyframes[:6])) + (", ..." if len(self.keyframes) > 6 else "")
        source = "each from the previous keyframe" if self.from_previous else "each from frame 0"
        meeting = f", the last {self.meet_frames} meeting the next keyframe" if self.meet_frames else ""
        return (f"keyframes {shown} (every {self.every}, {source}); {self.segments} segments of up to "
                f"{self.every - 1} frames{meeting}")
