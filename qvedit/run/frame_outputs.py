"""What a run writes for each frame, and how a run goes on from what an earlier one wrote.

Re-running into the same run folder (``hydra.run.dir=RUN``) keeps the finished frames and goes on
from the first missing one. Per-frame seeding makes the result identical to an uninterrupted run.
The frames folder remembers the settings its frames were made with (``.qvedit-run.yaml``: the keys tagged
``frames=True`` in the schema, see ``qvedit.run.config_values.frame_settings``); a re-run whose settings would change
the frames is refused, naming the keys that differ.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from qvedit.core.background_writer import Background
from qvedit.core.color_stats import LabStats
from qvedit.core.errors import QveditError
from qvedit.core.files import write_text_atomic
from qvedit.core.images import read_rgb8, unusable_image
from qvedit.core.stopping import finished, shielded
from qvedit.guidance.optical_flow import FlowPair
from qvedit.io.frames import FrameWriter
from qvedit.report.confdiff import diff_configs
from qvedit.scoring.frame_metrics import FrameMetrics, MetricsLog, complete_rows
from qvedit.settings.schema import frame_setting_defaults

log = logging.getLogger(__name__)

MANIFEST = ".qvedit-run.yaml"  # io.layout.holds_nothing_of_its_own knows the name


@dataclass
class MadeFrame:
    """One frame as ``qvedit.run.clip_editor.FrameMaker.make`` made it, with what its metrics row is measured
    against."""

    frame: Image.Image  # 8-bit RGB at the clip's size, its colours corrected (anchor.color)
    edge: Image.Image  # its edge map at the clip's size
    pair: Optional[FlowPair]  # the source flow from this frame back to the frame before it (metrics, guidance)
    color_target: Optional[LabStats]  # its target colour statistics (anchor.color, color_drift)
    started: float  # time.perf_counter() when the frame was begun
    guided_steps: int


def frame_row(scorer: FrameMetrics, index: int, made: MadeFrame, before: Optional[Image.Image], **columns) -> dict:
    """Frame ``index``'s metrics row: its quality columns against ``before`` (the frame it follows; None for a
    keyframe, made before the frame before it), ``guided_steps`` and ``columns`` (``hops``, timing)."""
    return {"frame": index, **scorer.score(made.frame, made.edge, before, made.pair, made.color_target),
            "guided_steps": made.guided_steps, **columns}


def check_or_record(frames_dir: Path, settings: dict[str, object], start_over_on: tuple[str, ...] = ()) -> bool:
    """Refuse to add frames to a folder made with other settings; remember these settings otherwise.

    Frames that differ from ``settings`` only in keys of ``start_over_on`` (``first_frame.pick``: frame 0
    changed) are not refused: this returns True and records nothing, and the caller makes the clip again
    from frame 0 with ``start_over``. Returns False otherwise."""
    manifest = frames_dir / MANIFEST
    has_frames = (frames_dir / "00000.png").exists()
    if has_frames and manifest.is_file():
        try:
            recorded = OmegaConf.to_container(OmegaConf.load(manifest))
        except Exception as err:  # yaml's and OmegaConf's errors, undecodable bytes: damage of any kind
            recorded = err
        if not isinstance(recorded, dict):
            raise QveditError(f"{manifest} is damaged ({type(recorded).__name__}): it records the settings the frames "
                              f"in {frames_dir} were made with; restore it, or write to a new folder (another "
                              "hydra.run.dir or io.out_frames_dir)")
        # Read a manifest of an earlier qvedit with today's keys: keys no longer recorded (the loaders'
        # _target_) are dropped, and keys added since take their default, which is what that run used.
        defaults = frame_setting_defaults()
        before = {key: recorded.get(key, defaults.get(key)) for key in settings}
        differing = diff_configs(before, settings)
        if differing and all(key in start_over_on for key, _, _ in differing):
            return True
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differing)
        if differing and not (frames_dir / "00001.png").exists():
            # Frame 0 alone (the input, copied): the run before made no frame (it failed before its first), so
            # nothing made with its settings is lost: the corrected command goes on in the same folder.
            log.info("%s holds only frame 0 of a run with other settings (%s) that made no frame: starting afresh",
                     frames_dir, listed)
            (frames_dir / "00000.png").unlink()
            write_text_atomic(manifest, OmegaConf.to_yaml(OmegaConf.create(settings)))
            return False
        if differing:
            raise QveditError(
                f"{frames_dir} holds frames made with other settings ({listed}): resume with the same settings, "
                "or write to a new folder (another hydra.run.dir or io.out_frames_dir)"
            )
        return False
    if has_frames:
        raise QveditError(f"{frames_dir} already holds frames that qvedit did not record: choose an empty folder "
                          "(another hydra.run.dir or io.out_frames_dir)")
    write_text_atomic(manifest, OmegaConf.to_yaml(OmegaConf.create(settings)))
    return False


def keeps_saved_frames(make: Callable) -> Callable:
    """For ``make(pipe, source, outputs: ClipOutputs, ...)`` (``edit_clip``): an error or a stop on the way out
    first lets ``outputs`` finish writing the frames it was given (they are finished: a stop keeps them)."""

    @functools.wraps(make)
    def making(pipe, source, outputs: "ClipOutputs", *args, **kwargs):
        try:
            return make(pipe, source, outputs, *args, **kwargs)
        except BaseException:
            outputs.finish(quietly=True)
            raise

    return making


def start_over(frames_dir: Path, settings: dict[str, object]) -> int:
    """Remove the frames of ``frames_dir`` (a clip whose frame 0 changed), the last first so that a kill
    leaves a shorter clip, then record ``settings``. Returns how many frames were removed."""
    frames = sorted(Path(frames_dir).glob("[0-9][0-9][0-9][0-9][0-9].png"), reverse=True)
    for path in frames:
        path.unlink()
    write_text_atomic(Path(frames_dir) / MANIFEST, OmegaConf.to_yaml(OmegaConf.create(settings)))
    return len(frames)


class ClipOutputs:
    """The frames of one clip (``00000.png ...``) and, with ``metrics_csv``, one metrics row per frame.

    A frame's row is written after the frame; a frame whose row is missing (a kill in between) is
    made again on resume, so the two never disagree.
    """

    def __init__(self, frames: FrameWriter, metrics_csv: Optional[Path] = None, metrics: Optional[FrameMetrics] = None,
                 debug_dir: Optional[Path] = None):
        self.frames = frames
        self.metrics_csv = metrics_csv
        self.metrics = metrics or FrameMetrics()
        self.debug_dir = debug_dir  # guidance debug images, when set
        self.hops: Callable[[int], int] = lambda index: index  # the hops of each frame (a chain's: its index)
        self._rows: Optional[MetricsLog] = None
        self._writer: Optional[Background] = None  # writes frames and rows beside the loop (save)

    @property
    def folder(self) -> Path:
        return self.frames.folder

    def resume_point(self, init: Image.Image, total: int) -> int:
        """How many frames of this clip are already finished (0 for a new run).

        Every finished frame is decoded: one damaged on disk (truncated, overwritten, another size) is
        made again, with the frames after it.
        """
        done = self.frames.finished()
        for index in range(min(done, total)):
            problem = unusable_image(self.frames.path(index), init.size)
            if problem:
                log.warning("%s: %s; making frames %d.. again", self.frames.path(index), problem, index)
                done = index
                break
        if done and not np.array_equal(np.asarray(read_rgb8(self.frames.path(0))), np.asarray(init)):
            raise QveditError(f"{self.folder} holds frames of another clip (its frame 0 is not this init frame): "
                              "write to a new folder (another hydra.run.dir or io.out_frames_dir)")
        done = min(done, total)
        if self.metrics_csv and done > 1:  # a frame whose metrics row was lost is made again (same bytes)
            done = min(done, 1 + len(complete_rows(self.metrics_csv, self.metrics.columns, self.hops)))
        return done

    def previous_frame(self, done: int, init: Image.Image) -> Image.Image:
        """The frame the first frame still to make follows: the last finished one, or frame 0."""
        return read_rgb8(self.frames.path(done - 1)) if done > 1 else init

    def start(self, init: Image.Image, done: int) -> list[Path]:
        """Begin at frame ``done``: write frame 0 if needed, keep the metrics rows of the frames before.
        Returns the paths of the frames finished so far."""
        if self.metrics_csv:
            self._rows = MetricsLog(self.metrics_csv, self.metrics.columns, keep_frames_before=done, hops=self.hops)
        self.metrics.start(init)
        finished(self.folder, done - 1)
        return [self.frames.write(0, init)] if done == 0 else [self.frames.path(i) for i in range(done)]

    def save(self, index: int, made: MadeFrame, previous: Image.Image, **columns) -> Path:
        """Frame ``index`` written, then made to appear with its metrics row (``frame_row``: scored against
        ``previous``, with ``columns``), in the background while the next frame is made (``qvedit.core.background_writer``):
        frames and rows still appear together, in order. A failure comes back at a later ``save`` or at ``finish``.
        Returns the frame's path."""
        if self._writer is None:
            self._writer = Background(f"qvedit-writer-{self.folder.name}")
        self._writer.submit(lambda: self._stage_and_commit(index, made, previous, columns))
        return self.frames.path(index)

    def finish(self, quietly: bool = False) -> None:
        """Until every frame ``save`` was given is on disk with its row; raises what failed on the way (``quietly``:
        logs it, for a caller already on its way out of an error of its own)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if quietly:
                writer.close_quietly()
            else:
                writer.close()

    def _stage_and_commit(self, index: int, made: MadeFrame, previous: Image.Image, columns: dict) -> None:
        """Frame ``index`` under its temporary name, scored, then its row and the frame appear together: a signal
        waits until both are there."""
        self.frames.stage(index, made.frame)
        row = None if self._rows is None else frame_row(self.metrics, index, made, previous, **columns)
        with shielded():  # the row first: a row whose frame is missing is dropped on resume
            if row is not None:
                self._rows.append(row)
            self.frames.commit(index)
            finished(self.folder, index)
