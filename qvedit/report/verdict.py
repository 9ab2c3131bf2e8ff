"""What a judged sweep is: its jobs, the guided-vs-off comparisons with their criteria, the verdict.

``qvedit.report.acceptance`` makes these from a sweep folder; ``qvedit.report.html`` and ``acceptance.md``
show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from qvedit.settings.report import Thresholds
from qvedit.settings.schema import scale_keys

SCALES = scale_keys()  # ttlg.edge_scale, ...: a job is guided when one of them is > 0


@dataclass
class SweepJob:
    """One job folder of a sweep: its flat config, its metrics.csv table, and why it failed (None: it did not)."""

    path: Path
    config: dict
    metrics: Optional[pd.DataFrame]
    error: Optional[str]

    @property
    def guided(self) -> bool:
        return any(float(self.config.get(key) or 0) > 0 for key in SCALES)

    @property
    def ttlg(self) -> str:
        scales = [f"{key.split('.')[1]}={self.config[key]}" for key in SCALES if float(self.config.get(key) or 0) > 0]
        if float(self.config.get("ttlg.temporal_scale") or 0) > 0 and self.config.get("ttlg.temporal_mode") == "flow":
            scales.append("temporal_mode=flow")
        return ",".join(scales) or "off"


@dataclass
class Criterion:
    """One acceptance criterion of a comparison, judged on the median over seeds (docs/METHOD.md, section 5)."""

    name: str
    value: Optional[float]
    threshold: str
    passed: Optional[bool]  # None: could not be judged; ``note`` says why
    note: str = ""


@dataclass
class Comparison:
    """A guided setting's jobs against their ``ttlg=off`` twins, seed by seed, and its criteria once judged."""

    label: str
    seeds: list
    on: dict  # seed -> SweepJob
    off: dict  # seed -> SweepJob
    frames: int = 0
    criteria: list = field(default_factory=list)
    context: str = ""  # the settings (not ttlg, not seed) that tell this comparison from the sweep's others

    @property
    def title(self) -> str:
        return f"ttlg {self.label} vs ttlg=off" + (f" ({self.context})" if self.context else "")

    def metrics(self, guided: bool) -> dict:
        """{seed: metrics.csv table} of the guided or the off jobs."""
        return {seed: job.metrics for seed, job in (self.on if guided else self.off).items()}


@dataclass
class SweepVerdict:
    """A judged sweep: its jobs, the guided-vs-off comparisons with their criteria, and notes."""

    sweep_dir: Path
    jobs: list
    comparisons: list
    messages: list
    limits: Thresholds

    @property
    def failed_jobs(self) -> list:
        return [job for job in self.jobs if job.error]

    @property
    def judged(self) -> list:
        return [c for comparison in self.comparisons for c in comparison.criteria if c.passed is not None]

    @property
    def passed(self) -> bool:
        return bool(self.judged) and all(c.passed for c in self.judged) and not self.failed_jobs


PLOTTED = ("edge_loss", "gram_loss", "warp_error")  # each comparison's per-frame plots, guided against off


def plot_name(comparison: Comparison, column: str) -> str:
    """The file name (in the sweep folder) of ``comparison``'s plot of ``column``."""
    name = comparison.label + (f"_{comparison.context}" if comparison.context else "")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name.replace("=", ""))
    return f"acceptance_{safe}_{column}.png"
