"""``metrics/``, ``acceptance/``, ``logger/`` and ``tuning/``: what is measured per frame, the thresholds a sweep
is judged by, where runs are tracked, and what a search trial returns.

Plain settings (what each key means: README, "Keys"); ``qvedit.report.metrics`` and
``qvedit.report.acceptance`` do the work, ``qvedit.report.tracking`` and ``qvedit.report.tuning`` for
``logger/`` and ``tuning/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.fields import setting
from qvedit.settings.guidance import VGG_MIN_SIZE, VGG_WEIGHTS


@dataclass
class MetricsSettings:
    """Per-frame metrics, written to ``metrics.csv`` as each frame finishes. They never change frames."""

    quality: bool = setting(True)
    path: Optional[str] = setting(None, path="output")
    size: int = setting(256, min=VGG_MIN_SIZE)
    gram_size: int = setting(256, min=VGG_MIN_SIZE)
    vgg_weights: str = setting("imagenet", choices=VGG_WEIGHTS)


@dataclass
class Thresholds:
    """The median-of-seeds acceptance criteria (docs/METHOD.md, section 5); the defaults are the design's."""

    frames: int = setting(8, min=1)
    edge_ratio: float = setting(0.95, min=0)
    edge_frames_fraction: float = setting(0.6, min=0, max=1)
    gram_ratio: float = setting(0.98, min=0)
    lpips_prev_min: float = setting(0.005, min=0, max=1)
    lpips_init_min: float = setting(0.01, min=0, max=1)
    warp_ratio: float = setting(1.0, min=0)  # guided warp error / unguided, at most this (1.0: not worse)
    drift_ratio: float = setting(1.0, min=0)  # guided color_drift over the last quarter / unguided, at most this


LOGGER_BACKENDS = ("none", "mlflow")


@dataclass
class LoggerSettings:
    """``logger/``: experiment tracking. Logging reads what a run wrote and never changes its frames."""

    backend: str = setting("none", choices=LOGGER_BACKENDS)
    tracking_uri: Optional[str] = setting(None, path="output")  # null = sqlite:///<cwd>/runs/mlflow.db
    experiment_name: str = setting("qvedit")


TUNING_OBJECTIVES = ("edge_loss", "gram_loss", "warp_error")


@dataclass
class TuningSettings:
    """``tuning/``: what a search trial returns (``hparams_search=ttlg_optuna`` sets it): the guided / unguided
    ratio of the mean of each named metrics.csv column, the unguided clip made once per sweep."""

    objectives: list = setting(default_factory=list, choices=TUNING_OBJECTIVES)  # each entry one of the choices
