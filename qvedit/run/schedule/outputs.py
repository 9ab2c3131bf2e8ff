"""The driver's side of a segment schedule's frames folder: what a resumed run keeps, each frame's commit with its
metrics row, and ``metrics.csv`` in frame order once the clip is whole.

Frames are finished in any order (keyframes first, segments side by side), so a resumed run cannot count the
frames 1..N on disk as a chain does: it keeps every frame that is on disk whole with its metrics row and whose own
inputs are kept (``SegmentPlan.kept``), and makes the others. Rows are appended as frames finish; at the end the
file is rewritten in frame order, the keyframes' rows completed with their columns against the frame before them
(the warp error at the seam), which exist only once the segment before is made.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import append_whole, atomic_path, commit_partial
from qvedit.core.images import read_rgb8, unusable_image
from qvedit.core.stopping import finished_text, shielded
from qvedit.run.frame_outputs import ClipOutputs
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.run.schedule.worker import FrameDone

log = logging.getLogger(__name__)

FRAME_NAME = re.compile(r"(\d{5})\.png")


class SegmentOutputs:
    """One clip's frames folder and ``metrics.csv`` as a segment schedule fills them (``outputs``: the folder's
    writer, which holds its lock, and the metrics' columns)."""

    def __init__(self, outputs: ClipOutputs, plan: SegmentPlan):
        self.outputs, self.plan = outputs, plan
        self.columns = outputs.metrics.columns
        self.done: set[int] = set()

    @property
    def folder(self) -> Path:
        return self.outputs.folder

    @property
    def metrics_csv(self) -> Optional[Path]:
        return self.outputs.metrics_csv

    @property
    def scores_seams(self) -> bool:
        """Whether the keyframes' rows get columns against the frame before them (quality metrics are on)."""
        return self.metrics_csv is not None and self.outputs.metrics.quality

    def resume(self, init: Image.Image) -> set[int]:
        """The frames (1..T-1) already finished and kept; every frame on disk is decoded first."""
        total, frames = self.plan.total, self.outputs.frames
        on_disk = {int(m.group(1)) for p in self.folder.iterdir() if (m := FRAME_NAME.fullmatch(p.name))}
        if 0 in on_disk and not np.array_equal(np.asarray(read_rgb8(frames.path(0))), np.asarray(init)):
            raise QveditError(f"{self.folder} holds frames of another clip (its frame 0 is not this init frame): "
                              "write to a new folder (another hydra.run.dir or io.out_frames_dir)")
        whole = set()
        for index in sorted(i for i in on_disk if 0 < i < total):
            problem = unusable_image(frames.path(index), init.size)
            if problem:
                log.warning("%s: %s; making it again", frames.path(index), problem)
            else:
                whole.add(index)
        if self.metrics_csv is not None:
            whole &= set(self.rows())  # a frame whose row a kill cut off is made again (the same bytes)
        return self.plan.kept(whole)

    def rows(self) -> dict[int, list[str]]:
        """{frame: its whole row} of ``metrics.csv`` (those of frames 1..T-1, under this run's columns)."""
        path = self.metrics_csv
        if path is None or not path.is_file():
            return {}
        try:
            with open(path, newline="") as handle:
                table = list(csv.reader(handle))
        except (UnicodeDecodeError, csv.Error) as err:
            log.warning("%s cannot be read (%s): its frames are made again", path, err)
            return {}
        if not table or table[0] != self.columns:
            return {}
        return {int(row[0]): row for row in table[1:]
                if len(row) == len(self.columns) and row[0].isdigit() and 0 < int(row[0]) < self.plan.total}

    def start(self, init: Image.Image, kept: set[int]) -> None:
        """Write frame 0 if it is not there, and keep only the rows of the ``kept`` frames, in frame order."""
        if not self.outputs.frames.path(0).is_file():
            self.outputs.frames.write(0, init)
        self.done = set(kept)
        if self.metrics_csv is not None:
            rows = self.rows()
            self._write_rows([rows[i] for i in sorted(kept)])
        self._say_kept()

    def commit(self, done: FrameDone) -> None:
        """Frame ``done.index`` appears with its metrics row: a signal waits until both are there."""
        line = None
        if self.metrics_csv is not None:
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerow([done.row.get(c, "") for c in self.columns])
            line = text.getvalue()
        with shielded():  # the row first: a row whose frame is missing is dropped on resume
            if line is not None:
                append_whole(self.metrics_csv, line)
            commit_partial(self.outputs.frames.path(done.index), done.staged)
            self.done.add(done.index)
            self._say_kept()

    def finish(self, seams: dict[int, dict]) -> None:
        """Rewrite ``metrics.csv`` in frame order, each keyframe's row with its ``seams`` columns (against the
        frame before it)."""
        if self.metrics_csv is None:
            return
        rows = self.rows()
        for keyframe, columns in seams.items():
            if keyframe in rows:
                rows[keyframe] = [_cell(columns[c]) if c in columns else cell
                                  for c, cell in zip(self.columns, rows[keyframe])]
        self._write_rows([rows[i] for i in sorted(rows)])

    def paths(self) -> list[Path]:
        return [self.outputs.frames.path(i) for i in range(self.plan.total)]

    def _write_rows(self, rows: list[list[str]]) -> None:
        with atomic_path(self.metrics_csv) as partial, open(partial, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([self.columns] + rows)

    def _say_kept(self) -> None:
        finished_text(self.folder, f"{len(self.done)} of the {self.plan.total - 1} frames")


def _cell(value) -> str:
    return "" if value is None else str(value)
