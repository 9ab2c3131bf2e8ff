"""``schedule/``: in which order a clip's frames are made, and by how many workers (docs/scale-out.md).

``schedule=chain`` (the default) is the rolling loop: frame k+1 is an edit of frame k. ``schedule=segments`` makes
keyframes K, 2K, ... first and then each segment between two keyframes as a short chain from its keyframe, so no
frame is more than about K edits from frame 0 and the segments can be made side by side on ``workers`` Ray workers
(``qvedit.run.schedule``). ``workers`` and ``ray_address`` say where frames are made, not what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting

SCHEDULE_MODES = ("chain", "segments")
KEYFRAME_SOURCES = ("first", "previous_keyframe")
# A segment's last frames that also get the next keyframe as image 3. Measured on io=demo_long (docs/scale-out.md,
# "One long clip on many GPUs and machines"): on the tiny model, whose random weights barely use the condition
# images, 0, 1, 2 and 4 such frames gave the seams' warp error within 0.3% of each other (0.02274 .. 0.02269,
# falling with more), so the measurement cannot choose; 2 gives the model the keyframe on the two frames before the
# seam for +6% of a segment's time (a three-image frame costs 1.44x, measured on an H200), where 4 would cost +12%.
MEET_FRAMES = 2


@dataclass
class ScheduleSettings:
    """The order frames are made in (``mode``), the keyframes of ``segments``, and the workers that make them."""

    mode: str = setting("chain", frames=True, choices=SCHEDULE_MODES, help=(
        "`chain`: frame k+1 is an edit of frame k (`schedule=chain`); `segments`: keyframes first, then the "
        "segments between them (`schedule=segments`, [One long clip on many "
        "GPUs](scale-out.md#one-long-clip-on-many-gpus-and-machines-schedulesegments))"))
    keyframe_every: int = setting(16, frames=True, min=2, help=(
        "`segments`: keyframes at frames K, 2K, ... (at least 2, at most the clip's last frame)"))
    keyframes_from: str = setting("first", frames=True, choices=KEYFRAME_SOURCES, help=(
        "`segments`: a keyframe is made from frame 0 (`first`: `image=[edge, frame 0]`, each one edit from "
        "frame 0) or from the keyframe before (`previous_keyframe`: `image=[edge, previous keyframe, frame "
        "0]`, a chain with stride K)"))
    meet_frames: int = setting(MEET_FRAMES, frames=True, min=0, help=(
        "`segments`: a segment's last N frames also get the next keyframe as image 3, so the chain meets it "
        "(at most K-1; 0 with `anchor.first_frame_image`, whose frame 0 then is image 3)"))
    workers: int = setting(1, min=1, help=(
        "`segments`: 1 = made in this process; N >= 2 = N Ray workers, each holding one loaded pipeline on "
        "one GPU (`device=cuda`) or one CPU thread (`device=cpu`); the frames are the same bytes whatever N "
        "is, and it may change on resume"))
    ray_address: Optional[str] = setting(None, help=(
        "null = a local Ray on this machine; `auto` (a cluster started here with `ray start`), `HOST:PORT` or"
        " `ray://HOST:PORT` = join that cluster (qvedit installed on every node, the run folder and the "
        "inputs on a shared filesystem)"))

    @property
    def segments(self) -> bool:
        return self.mode == "segments"

    @property
    def on_ray(self) -> bool:
        """Whether the frames are made by Ray workers (else in this process)."""
        return self.segments and self.workers > 1

    def parallel_conflict(self, parallel_degree: int) -> Optional[str]:
        """Why segments cannot run with ``parallel.*`` degrees whose product is ``parallel_degree`` (checked before
        torchrun's team starts), or None."""
        if self.segments and parallel_degree > 1:
            return (f"schedule=segments with parallel.* degrees ({parallel_degree} processes a frame): segments run "
                    "on Ray workers of one GPU each, not on a torchrun team; run python -m qvedit without torchrun "
                    "and set schedule.workers to the GPUs to use")
        return None

    def conflict(self, total: int, anchor_every: Optional[int], first_frame_image: bool,
                 max_images: int = 3) -> Optional[str]:
        """Why these schedule settings cannot make a clip of ``total`` frames (frame 0 included) with the anchor
        settings given, on a model taking ``max_images`` condition images a call (one line), or None."""
        if not self.segments:
            if self.workers > 1:
                return (f"schedule.workers={self.workers} with schedule=chain: a chain makes one frame after another, "
                        "so only one worker could ever run; use schedule=segments (keyframes, then the segments "
                        "between them side by side), or schedule.workers=1")
            return None
        if self.ray_address and self.workers == 1:
            return (f"schedule.ray_address={self.ray_address} with schedule.workers=1: one worker runs in this "
                    "process, without Ray; set schedule.workers to the GPUs to use, or leave ray_address unset")
        if self.keyframe_every > total - 1:
            return (f"schedule.keyframe_every={self.keyframe_every} but the clip has {total} frames (0..{total - 1}): "
                    f"no keyframe would be made; use at most {max(2, total - 1)}, or schedule=chain")
        if self.meet_frames > self.keyframe_every - 1:
            return (f"schedule.meet_frames={self.meet_frames} but a segment has {self.keyframe_every - 1} frames "
                    f"(schedule.keyframe_every={self.keyframe_every}): use at most {self.keyframe_every - 1}")
        if anchor_every is not None:
            return (f"anchor.every={anchor_every} with schedule=segments: the keyframes already bound every chain; "
                    "use schedule.keyframe_every instead (anchor=none)")
        if first_frame_image and self.meet_frames > 0 and max_images < 4:
            return (f"anchor.first_frame_image with schedule=segments and schedule.meet_frames={self.meet_frames}: a "
                    "segment's last frames already take three images (edge map, previous frame, next keyframe) and "
                    f"this model takes at most {max_images} (Qwen-Image-Edit-2509 and -2511; Qwen-Image 2.1 takes "
                    "frame 0 as a fourth); set schedule.meet_frames=0 (frame 0 is then every segment frame's third "
                    "image) or anchor.first_frame_image=false")
        return None
