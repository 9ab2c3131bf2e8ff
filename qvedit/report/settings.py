"""``metrics/`` and ``acceptance/``: what is measured per frame, and the thresholds a sweep is judged by.

Plain settings (what each key means: README, "Keys"); ``metrics`` and ``acceptance`` do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.errors import QveditError
from qvedit.fields import check_fields, setting
from qvedit.guidance.settings import VGG_MIN_SIZE

VGG_BACKBONES = ("imagenet", "random")


@dataclass
class MetricsSettings:
    """Per-frame metrics, written to ``metrics.csv`` as each frame finishes. They never change frames."""

    quality: bool = setting(True)
    path: Optional[str] = setting(None, path="output")
    size: int = setting(256, min=VGG_MIN_SIZE)
    gram_size: int = setting(256, min=VGG_MIN_SIZE)
    vgg_weights: str = setting("imagenet")

    def __post_init__(self):
        check_fields(self, "metrics.")
        if self.vgg_weights not in VGG_BACKBONES:
            raise QveditError(f"metrics.vgg_weights={self.vgg_weights!r}: use imagenet or random (tests only)")

    def scorer(self, device: str, quality: Optional[bool] = None):
        """The ``FrameMetrics`` that scores frames on ``device`` (``quality=False``: timing columns only)."""
        from qvedit.report.metrics import FrameMetrics

        return FrameMetrics(self, device, self.quality if quality is None else quality and self.quality)


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

    backend: str = setting("none")
    tracking_uri: Optional[str] = setting(None, path="output")  # null = sqlite:///<cwd>/runs/mlflow.db
    experiment_name: str = setting("qvedit")

    def __post_init__(self):
        if self.backend not in LOGGER_BACKENDS:
            raise QveditError(f"logger.backend={self.backend!r}: use none or mlflow (logger=mlflow)")


TUNING_OBJECTIVES = ("edge_loss", "gram_loss", "warp_error")


@dataclass
class TuningSettings:
    """``tuning/``: what a search trial returns (``hparams_search=ttlg_optuna`` sets it): the guided / unguided
    ratio of the mean of each named metrics.csv column, the unguided clip made once per sweep."""

    objectives: list = setting(default_factory=list)

    def __post_init__(self):
        unknown = [name for name in self.objectives if name not in TUNING_OBJECTIVES]
        if unknown:
            raise QveditError(f"tuning.objectives names {unknown}: use {', '.join(TUNING_OBJECTIVES)}")
