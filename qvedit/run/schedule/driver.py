"""The driver of a segment schedule: hands each frame to a worker once the frames it is made from are finished,
commits every frame a worker returns (with its metrics row), and says how far the clip is, in one line.

Keyframes go out first (in order: ``previous_keyframe`` makes them a chain); then the segments' frames, each worker
going on with its own segment while there is plenty of work and, near the end, the frame whose segment has the most
frames left going first (``TaskQueue``); last, the keyframes' rows get their columns against the frame before (the
seams). A task whose worker is lost goes to the next free worker: its segment goes on from
its last finished frame. A frame lost with ``MAX_ATTEMPTS`` workers in a row stops the run (it is likely what kills
them: out of memory), keeping every finished frame.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional

from PIL import Image
from tqdm.auto import tqdm

from qvedit.core import stopping
from qvedit.core.errors import QveditError
from qvedit.core.files import remove_partials
from qvedit.run.schedule.outputs import SegmentOutputs
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.run.schedule.pool import Lost, Pool
from qvedit.run.schedule.worker import MAKE, SEAM, FrameDone

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class TaskQueue:
    """The tasks of a clip still to do, each released once the frames it needs are finished: (``make``, frame)
    for every frame not ``done``, then (``seam``, keyframe) for every keyframe (with ``seams``: quality metrics).

    ``take(after, workers)`` chooses among the segment frames that can be made. While there is more work left than
    the longest segment's (frames to make / workers > the most frames any ready segment has left), any order keeps
    every worker busy: a worker goes on with its own segment (``after``: the frame after the one it made last) or
    starts the earliest one, so each worker moves forward through the clip (a video is decoded as a stream). Near
    the end, the frame whose segment has the most frames left goes first, so all segments advance together and no
    worker waits for the last long one (3 segments of 15 frames on 2 workers: 24 rounds, not 31).
    """

    def __init__(self, plan: SegmentPlan, done: Iterable[int], seams: bool = True):
        self.plan = plan
        self.done = set(done)
        self.waiting: dict[tuple, set[int]] = {}  # task -> the frames it still needs
        self.needed_by: dict[int, list[tuple]] = defaultdict(list)
        self.keyframes: list[int] = []  # heaps of ready tasks' frame indices
        self.seams: list[int] = []
        self.frames: set[int] = set()  # ready segment frames, also in the two heaps below (stale entries skipped)
        self.by_index: list[int] = []
        self.by_left: list[tuple[int, int]] = []  # (-frames left in its segment, index)
        self.frames_todo = 0  # segment frames and keyframes not committed yet (going out or waiting)
        for index in range(1, plan.total):
            if index not in self.done:
                self.frames_todo += 1
                self._add((MAKE, index), plan.recipe(index).depends_on)
        for keyframe in plan.keyframes if seams else ():
            self._add((SEAM, keyframe), (plan.seam_before(keyframe), keyframe))

    def _add(self, task: tuple, needs: Iterable[int]) -> None:
        missing = {index for index in needs if index not in self.done}
        if not missing:
            self._release(task)
            return
        self.waiting[task] = missing
        for index in missing:
            self.needed_by[index].append(task)

    def _release(self, task: tuple) -> None:
        """``task`` can go out."""
        kind, index = task
        if kind == SEAM:
            heapq.heappush(self.seams, index)
        elif self.plan.is_keyframe(index):
            heapq.heappush(self.keyframes, index)
        else:
            self.frames.add(index)
            heapq.heappush(self.by_index, index)
            heapq.heappush(self.by_left, (-self.plan.frames_left(index), index))

    def take(self, after: Optional[int] = None, workers: int = 1) -> Optional[tuple]:
        """The next task to go out to a worker whose last frame was ``after - 1`` (of ``workers``), or None."""
        if self.keyframes:
            return MAKE, heapq.heappop(self.keyframes)
        if self.frames:
            while self.by_index[0] not in self.frames:  # what went out another way
                heapq.heappop(self.by_index)
            while self.by_left[0][1] not in self.frames:
                heapq.heappop(self.by_left)
            longest, first = -self.by_left[0][0], self.by_index[0]
            if self.frames_todo / workers > longest:
                index = after if after in self.frames else first
            else:
                index = self.by_left[0][1]
            self.frames.discard(index)
            return MAKE, index
        if self.seams:
            return SEAM, heapq.heappop(self.seams)
        return None

    def put_back(self, task: tuple) -> None:
        """A task whose worker was lost: it can go out again at once."""
        self._release(task)

    def finished(self, index: int) -> None:
        """Frame ``index`` is committed: release what waited for it."""
        self.done.add(index)
        self.frames_todo -= 1
        for task in self.needed_by.pop(index, []):
            missing = self.waiting[task]
            missing.discard(index)
            if not missing:
                del self.waiting[task]
                self._release(task)

    def __bool__(self) -> bool:
        return bool(self.waiting or self.keyframes or self.frames or self.seams)


class Progress:
    """One bar for the clip on a terminal (frames done of N, what runs), else one log line per frame."""

    def __init__(self, plan: SegmentPlan, done: int, bars: bool, label: str):
        self.plan, self.done, self.total, self.label = plan, done, plan.total - 1, label
        self.bar = tqdm(total=self.total, initial=done, desc=label, unit="frame", disable=not bars)

    def running(self, tasks: Iterable[tuple]) -> str:
        frames = [index for kind, index in tasks if kind == MAKE]
        keyframes = [index for index in frames if self.plan.is_keyframe(index)]
        segments = sorted({self.plan.segment(index) for index in frames if not self.plan.is_keyframe(index)})
        parts = ([f"keyframe{'s' if len(keyframes) > 1 else ''} {', '.join(map(str, sorted(keyframes)))}"]
                 if keyframes else []) + ([f"segment{'s' if len(segments) > 1 else ''} "
                                           f"{', '.join(map(str, segments))}"] if segments else [])
        return "; ".join(parts)

    def frame(self, done: FrameDone, tasks: list[tuple]) -> None:
        """Frame ``done`` is committed; ``tasks``: those still out (none with one worker in this process)."""
        self.done += 1
        log.debug("frame %d: %.2f s, %.2f s CPU, on %s", done.index, done.seconds, done.cpu_seconds, done.worker)
        running = self.running(tasks)
        running = f"; running: {running}" if running else ""
        if self.bar.disable:
            log.info("%sframe %d done in %.2f s (%d of %d frames%s)", "" if self.label == "frames" else
                     f"{self.label}: ", done.index, done.seconds, self.done, self.total, running)
        else:
            self.bar.set_postfix_str(running.removeprefix("; "), refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def lost(task: tuple, outcome: Lost, attempts: int) -> None:
    """Say that ``task`` was lost with its worker (it goes out again), or stop after ``MAX_ATTEMPTS`` losses."""
    what = f"frame {task[1]}" if task[0] == MAKE else f"the seam of keyframe {task[1]}"
    if attempts >= MAX_ATTEMPTS:
        raise QveditError(f"{what} was lost with its worker {attempts} times (last: {outcome.worker}, "
                          f"{outcome.reason}): it may be what kills them (out of memory?); the finished frames are "
                          "kept: run the same command again to go on")
    log.warning("%s was lost while making %s (%s): it goes to the next free worker", outcome.worker, what,
                outcome.reason)


def make_segments(pool: Pool, outputs: SegmentOutputs, init: Image.Image, variant: str = "guided",
                  bars: bool = False) -> list[Path]:
    """Make the clip ``outputs`` holds with a segment schedule on ``pool``'s workers; returns its frames 0..T-1.

    Args:
        pool: the workers (``LocalPool`` or ``RayPool``); their tasks name ``variant``.
        outputs: the clip's frames folder and rows (its ``plan``: the keyframes and segments).
        init: frame 0 (8-bit RGB).
        variant: which clip the workers make: ``guided`` (the run's) or ``unguided`` (its ``compare_unguided`` twin).
        bars: a progress bar (a terminal) rather than a line per frame.
    """
    plan = outputs.plan
    kept = outputs.resume(init)
    outputs.start(init, kept)
    log.info("schedule=segments: %s", plan.describe())
    if kept:
        log.info("resuming: %d of the %d frames are already in %s; making the other %d", len(kept), plan.total - 1,
                 outputs.folder, plan.total - 1 - len(kept))
    queue = TaskQueue(plan, kept, seams=outputs.scores_seams)
    running: dict[int, tuple] = {}  # slot -> its task
    last: dict[int, int] = {}  # slot -> the frame it made last
    attempts: Counter = Counter()
    seams: dict[int, dict] = {}
    progress = Progress(plan, len(kept), bars, "frames" if variant == "guided" else f"{variant} frames")
    try:
        while queue or running:
            stopping.check()
            for slot in pool.idle():
                task = queue.take(last.get(slot, -1) + 1, pool.size)
                if task is None:
                    break
                pool.submit(slot, (variant, *task))
                running[slot] = task
            if not running and pool.idle():
                raise RuntimeError(f"segment schedule: nothing can go out, yet {len(queue.waiting)} tasks wait")
            for slot, outcome in pool.wait():  # none: a worker came (back) up, hand out again
                task = running.pop(slot)
                if isinstance(outcome, Lost):
                    attempts[task] += 1
                    lost(task, outcome, attempts[task])
                    queue.put_back(task)
                elif task[0] == MAKE:
                    outputs.commit(outcome)
                    queue.finished(outcome.index)
                    last[slot] = outcome.index
                    progress.frame(outcome, list(running.values()))
                else:
                    seams[task[1]] = outcome
    finally:
        progress.close()
    outputs.finish(seams)
    remove_partials(outputs.folder)  # what lost workers staged and never handed over
    return outputs.paths()
