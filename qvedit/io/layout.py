"""Where one run's outputs go: the single owner of every output path of a run folder.

By default everything is inside the run folder (``hydra.run.dir``, or a sweep job's folder)::

    <run>/frames/00000.png ...   io.out_frames_dir      (the resume manifest .qvedit-run.yaml too)
    <run>/metrics.csv            metrics.path
    <run>/preview.png, .gif      previews
    <run>/drift.png              the drift metrics per frame (and the unguided clip's, with compare_unguided)
    <run>/report.html            the run's page: summary, previews, settings, per-frame table
    <run>/output.mp4             io.out_video           (io=video)
    <run>/edges/00001.png ...    io.edges_dir           (io=video, edges made from the RGB video)
    <run>/unguided/frames/, metrics.csv                 the same clip with guidance off (compare_unguided)
    <run>/first_frame/candidate_00.png ...              frame 0 edited from the source's (first_frame.prompt):
                                                        the candidates, candidates.png, candidates.yaml
    <run>/error.txt              a sweep job's one-line failure, for the acceptance report
    debug_dir                    guidance debug images (only when set)

Under torchrun only rank 0 writes where the keys say; the other ranks keep everything in their
own scratch run folder, which is removed when they exit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qvedit.core.errors import QveditError
from qvedit.core.files import write_text_atomic

JOB_ERROR_FILE = "error.txt"


@dataclass(frozen=True)
class RunLayout:
    run_dir: Path
    frames_dir: Path
    metrics_csv: Path
    video: Path
    edges_dir: Path
    debug_dir: Optional[Path] = None

    @classmethod
    def resolve(cls, run_dir: Path, io, metrics, debug_dir: Optional[str] = None, is_main: bool = True) -> "RunLayout":
        """The layout for ``run_dir`` with the output keys of the ``io`` and ``metrics`` settings.

        ``is_main=False`` (a torchrun rank other than 0) ignores the keys: all stays in ``run_dir``.
        """
        run_dir = Path(run_dir)

        def chosen(value: Optional[str], default: Path) -> Path:
            return Path(value) if value and is_main else default

        return cls(
            run_dir=run_dir,
            frames_dir=chosen(getattr(io, "out_frames_dir", None), run_dir / "frames"),
            metrics_csv=chosen(metrics.path, run_dir / "metrics.csv"),
            video=chosen(getattr(io, "out_video", None), run_dir / "output.mp4"),
            edges_dir=chosen(getattr(io, "edges_dir", None), run_dir / "edges"),
            debug_dir=Path(debug_dir) if debug_dir and is_main else None,
        )

    def check(self) -> None:
        """Every output path can be made: no part of it is a file (checked before anything is written)."""
        for key, path, folder in (("hydra.run.dir", self.run_dir, self.run_dir),
                                  ("io.out_frames_dir", self.frames_dir, self.frames_dir),
                                  ("metrics.path", self.metrics_csv, self.metrics_csv.parent),
                                  ("io.out_video", self.video, self.video.parent),
                                  ("io.edges_dir", self.edges_dir, self.edges_dir),
                                  ("debug_dir", self.debug_dir, self.debug_dir)):
            blocked = file_in_the_way(folder) if folder is not None else None
            if blocked is not None:
                raise QveditError(f"{key}={path}: {blocked} is a file, not a folder: choose another path (or move "
                                  "the file)")

    def written_folders(self, run_key: str = "hydra.run.dir") -> list[tuple[str, Path]]:
        """(key, folder) of every folder this run writes files into (``run_key`` names the run folder's key)."""
        folders = [(run_key, self.run_dir), (run_key, self.run_dir / ".hydra"), (run_key, self.first_frame),
                   (run_key, self.unguided[0].parent), (run_key, self.unguided[0]),
                   ("io.out_frames_dir", self.frames_dir), ("metrics.path", self.metrics_csv.parent),
                   ("io.out_video", self.video.parent), ("io.edges_dir", self.edges_dir)]
        return folders + ([("debug_dir", self.debug_dir)] if self.debug_dir is not None else [])

    def input_problem(self, inputs: list[tuple[str, Path]], run_key: str = "hydra.run.dir") -> Optional[str]:
        """Why this run would write into a folder it reads a user's input from (one line), or None.

        Args:
            inputs: (key, path) of every existing input (``qvedit.run.config_values.input_paths``): a folder input
                may hold no folder the run writes into, at any depth; a file input's folder may not be one.
            run_key: the key that chose the run folder (``hydra.run.dir``, ``hydra.sweep.dir`` for a sweep).
        """
        for in_key, path in inputs:
            source = path.resolve()
            for out_key, folder in self.written_folders(run_key):
                out = folder.resolve()
                inside = source.is_dir() and (out == source or source in out.parents)
                if inside or (source.is_file() and out == source.parent):
                    where = "is" if out == source or out == source.parent else "is inside"
                    what = "the folder" if source.is_dir() else f"the folder of {source.name}, which"
                    return (f"{out_key}={folder} {where} {what} {in_key} reads from ({path}): qvedit never writes "
                            f"into a folder it reads your input from; choose another {out_key}")
        return None

    @property
    def unguided(self) -> tuple[Path, Path]:
        """(frames folder, metrics.csv) of the clip made again without guidance (``compare_unguided``)."""
        return self.run_dir / "unguided" / "frames", self.run_dir / "unguided" / "metrics.csv"

    @property
    def first_frame(self) -> Path:
        """The first-frame candidates' folder (``qvedit.run.first_frame``)."""
        return self.run_dir / "first_frame"

    @property
    def report(self) -> Path:
        """report.html: the run's page (qvedit.report.html)."""
        return self.run_dir / "report.html"

    @property
    def unguided_comparison(self) -> Path:
        """``edge | ttlg=off | guided`` GIF of a ``compare_unguided`` run."""
        return self.run_dir / "compare_unguided.gif"

    @property
    def drift_plot(self) -> Path:
        """The drift metrics of the clip per frame (qvedit.report.drift.plot_drift)."""
        return self.run_dir / "drift.png"

    @property
    def previews(self) -> tuple[Path, Path]:
        """(contact sheet PNG, animated GIF)."""
        return self.run_dir / "preview.png", self.run_dir / "preview.gif"


def file_in_the_way(folder: Path) -> Optional[Path]:
    """The file that ``folder`` or one of its parents is, if any (a folder cannot be made below it)."""
    for part in (Path(folder), *Path(folder).parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def metrics_csv_of(run_dir: Path, metrics_path: Optional[str]) -> Path:
    """Where a finished run's ``metrics.csv`` is, from its ``metrics.path`` value."""
    return Path(metrics_path) if metrics_path else Path(run_dir) / "metrics.csv"


def record_job_error(run_dir: Path, message: str) -> None:
    """Leave a sweep job's failure where the acceptance report finds it."""
    write_text_atomic(run_dir / JOB_ERROR_FILE, message.strip() + "\n")


def job_error(run_dir: Path) -> Optional[str]:
    """The failure a sweep job recorded, or None."""
    path = Path(run_dir) / JOB_ERROR_FILE
    return path.read_text().strip() if path.is_file() else None


def holds_nothing_of_its_own(run_dir: Path) -> bool:
    """True when a run folder holds only bookkeeping: Hydra's ``.hydra/`` and log file, the frames
    manifest, empty folders. A run that failed before making anything leaves no more than that."""
    run_dir = Path(run_dir)
    for path in run_dir.rglob("*"):
        relative = path.relative_to(run_dir)
        if path.is_dir() or relative.parts[0] == ".hydra" or (len(relative.parts) == 1 and path.suffix == ".log"):
            continue
        if relative.name in (".qvedit-run.yaml", ".qvedit-lock"):  # the frames manifest and lock (outputs, locks)
            continue
        return False
    return True


def discard_if_empty(run_dir: Path) -> bool:
    """Remove ``run_dir`` if a failed run left nothing of its own in it; returns whether it did."""
    run_dir = Path(run_dir)
    if not (run_dir.is_dir() and holds_nothing_of_its_own(run_dir)):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.parent.parent.name == "runs" and not any(run_dir.parent.iterdir()):
        run_dir.parent.rmdir()  # the runs/<date> folder of the default layout, if this run was its only one
    return True

