"""A worker's side of a segment schedule: make one frame from the frames folder, stage it there, score it.

A worker holds a loaded pipeline and everything a frame needs (``FrameMaker``: guidance, colour anchor, flow) and
keeps no state between frames: the frames a frame is made from are read from the frames folder, where the driver
committed them. So any worker can make any frame whose inputs are finished, a segment goes on from its last
finished frame on another worker when its own is lost, and a frame is the same bytes whichever worker makes it
(its seed is (seed, frame index)). The worker writes the frame under a temporary name of its own and returns it
with its metrics row; the driver makes both appear together (``qvedit.run.schedule.outputs``), so a worker that dies
never leaves a frame without its row, nor a half-written one.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from qvedit.core.files import WRITE_ERRNOS, track_staged, write_error
from qvedit.core.images import read_rgb8
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource
from qvedit.models.devices import peak_memory_mib
from qvedit.run.clip_editor import FrameMaker
from qvedit.run.frame_outputs import frame_row
from qvedit.run.frame_plan import ClipPlan
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.run import RunSettings

MAKE, SEAM = "make", "seam"  # the tasks a worker runs: make frame i; score keyframe i against the frame before


def frame_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"{index:05d}.png"


@dataclass
class FrameDone:
    """A frame a worker made and staged: the driver commits ``staged`` as the frame with ``row``."""

    index: int
    staged: str  # the frame's temporary file in the frames folder (a name of this worker's own)
    row: dict  # its metrics row: frame, hops, quality columns (those against the frame before: not for keyframes)
    seconds: float
    worker: str  # host and process that made it
    cpu_seconds: float = 0.0  # the worker process's CPU time over the frame (how much a busy machine slowed it)


class SegmentWorker:
    """Makes the frames of one clip (the guided clip, or its unguided twin) as a segment schedule's worker.

    ``maker`` holds the pipeline and the clip's guidance; ``scorer`` the metrics; ``folder`` is the clip's frames
    folder (shared with the driver: on a cluster, a shared filesystem); ``prompts`` = (two-image prompt,
    three-image prompt: ``anchor.prompt``).
    """

    def __init__(self, maker: FrameMaker, scorer: FrameMetrics, folder: Path, plan: SegmentPlan,
                 prompts: tuple[str, str]):
        self.maker, self.scorer, self.folder, self.plan, self.prompts = maker, scorer, Path(folder), plan, prompts
        self.scorer.start(self.read(0))
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self._staged = itertools.count()

    def read(self, index: int) -> Image.Image:
        """Finished frame ``index`` of the clip, as the driver committed it."""
        return read_rgb8(frame_path(self.folder, index))

    def run(self, task: str, index: int):
        """``make`` frame ``index`` (a ``FrameDone``), or the ``seam`` columns of keyframe ``index`` (a dict)."""
        return self.make(index) if task == MAKE else self.seam(index)

    def make(self, index: int) -> FrameDone:
        """Frame ``index`` from the finished frames it follows (``SegmentPlan.recipe``), staged in the folder."""
        cpu = time.process_time()
        recipe = self.plan.recipe(index)
        follows = self.read(recipe.follows)
        images = [follows] + [self.read(anchor) for anchor in recipe.anchors]
        prompt = self.prompts[1] if recipe.anchors else self.prompts[0]
        made = self.maker.make(index, lambda edge: [edge, *images], prompt, follows, temporal=not recipe.keyframe)
        staged = self.stage(index, made.frame)
        seconds = time.perf_counter() - made.started
        before = None if recipe.keyframe else follows  # a segment frame follows the frame before it
        row = frame_row(self.scorer, index, made, before, hops=self.plan.hops(index), seconds=round(seconds, 4),
                        peak_mem_mib=round(peak_memory_mib(self.maker.device), 1))
        return FrameDone(index, str(staged), row, seconds, self.name, time.process_time() - cpu)

    def seam(self, keyframe: int) -> dict:
        """The columns of keyframe ``keyframe``'s row against the frame before it (the end of the segment before):
        the warp error and LPIPS at the seam."""
        size = self.maker.plan.init_size
        edge = self.maker.source.edge_frame(keyframe - 1, size)
        pair = self.maker.flow.pair(keyframe, edge) if self.maker.flow is not None else None
        return self.scorer.to_previous(self.read(keyframe), self.read(keyframe - 1), pair)

    def stage(self, index: int, frame: Image.Image) -> Path:
        """Write ``frame`` under a temporary name no other worker or attempt uses; the driver renames it."""
        final = frame_path(self.folder, index)
        staged = final.with_name(f".{final.stem}.{self.name}-{next(self._staged)}.partial.png")
        try:
            frame.save(staged, format="PNG")
        except OSError as err:
            staged.unlink(missing_ok=True)
            if err.errno in WRITE_ERRNOS:
                raise write_error(err, final) from None
            raise
        track_staged(staged)  # in the driver's process (one worker): gone if the run stops before the commit
        return staged


class WorkerSet:
    """A worker's clips: the guided one and, with ``compare_unguided``, its unguided twin, each built on first use
    by ``build(variant)`` (one loaded pipeline serves both)."""

    def __init__(self, build: Callable[[str], SegmentWorker]):
        self.build = build
        self.clips: dict[str, SegmentWorker] = {}

    def run(self, variant: str, task: str, index: int):
        if variant not in self.clips:
            self.clips[variant] = self.build(variant)
        return self.clips[variant].run(task, index)


GUIDED, UNGUIDED = "guided", "unguided"  # the run's clip, and its compare_unguided twin (ttlg off)


@dataclass
class WorkerParts:
    """What a worker holds for the whole run: the loaded pipeline and the clip's objects, built once (in this process
    by ``qvedit.run.job.Job``, in a Ray worker by ``qvedit.run.job_worker.build_worker``); ``segment_worker`` makes a clip's
    worker."""

    pipe: object
    source: FrameSource
    settings: RunSettings
    ttlg: TTLGSettings
    anchor: AnchorSettings
    flow: Optional[ClipFlow]
    plan: ClipPlan
    layout: RunLayout
    scorer: FrameMetrics
    segments: SegmentPlan

    def segment_worker(self, variant: str) -> SegmentWorker:
        """The worker of the guided clip, or of its unguided twin (``compare_unguided``: ttlg off, its own folder)."""
        guided = variant == GUIDED
        folder = self.layout.frames_dir if guided else self.layout.unguided[0]
        first = read_rgb8(frame_path(folder, 0))
        maker = FrameMaker(self.pipe, self.source, self.settings, self.ttlg if guided else self.ttlg.turned_off(), self.plan,
                           first, flow=self.flow, anchor=self.anchor,
                           debug_dir=self.layout.debug_dir if guided else None, wants_color=self.scorer.quality)
        return SegmentWorker(maker, self.scorer, folder, self.segments, (self.settings.prompt, self.anchor.prompt))
