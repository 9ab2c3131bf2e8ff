"""What a run made (``JobResult``), handed back by ``qvedit.run.job.run`` in the process that ran it: the frames, the
metrics table and the summary, which the report, the drift plot and a search's objectives use as they are. Tools
that read a finished run folder later (the acceptance report over a sweep, ``python -m qvedit.diff``) read its
files instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from qvedit.report.summary import column_means
from qvedit.run.job_settings import JobSettings


@dataclass
class JobResult:
    """One clip a run made, and the settings it was made with."""

    settings: JobSettings
    run_dir: Path
    frames_dir: Path
    frames: list[Path]  # 00000.png ... of the clip, in order (none with first_frame.only)
    metrics_csv: Path  # where ``metrics`` is on disk
    metrics: pd.DataFrame  # one row per frame made (the rows an earlier run kept included); empty on ranks > 0
    means: dict[str, float]  # each metrics column's mean over the frames that have a value (the summary's)
    summary: list[str] = field(default_factory=list)  # what the run told the terminal at the end (rank 0)
    unguided: Optional["JobResult"] = None  # compare_unguided: the same clip made without guidance


def metrics_table(metrics_csv: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """The ``metrics.csv`` a clip's frames were scored into (by the run's background writer or its Ray workers,
    after the rows an earlier run kept), read once when the clip is finished: the table (empty, no columns, when
    there is none) and each column's mean (``column_means``)."""
    if not metrics_csv.is_file():
        return pd.DataFrame(), {}
    text = metrics_csv.read_text()
    return pd.read_csv(io.StringIO(text)), column_means(text)
