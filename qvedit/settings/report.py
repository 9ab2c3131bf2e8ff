"""``metrics/``, ``acceptance/``, ``logger/`` and ``tuning/``: what is measured per frame, the thresholds a sweep
is judged by, where runs are tracked, and what a search trial returns.

Plain settings (keys: docs/configuration.md); ``qvedit.scoring.frame_metrics`` and
``qvedit.report.acceptance`` do the work, ``qvedit.report.tracking`` and ``qvedit.report.tuning`` for
``logger/`` and ``tuning/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting
from qvedit.settings.guidance import VGG_MIN_SIZE, VGG_WEIGHTS


@dataclass
class MetricsSettings:
    """Per-frame metrics, written to ``metrics.csv`` as each frame finishes. They never change frames."""

    quality: bool = setting(True, help="false = only `frame, seconds, guided_steps, peak_mem_mib` (`metrics=none`)")
    path: Optional[str] = setting(None, path="output", flag="--metrics_out", help=(
        "per-frame rows, written as each frame finishes; null = `<run dir>/metrics.csv`"))
    size: int = setting(256, min=VGG_MIN_SIZE, help="long side both images are resized to for LPIPS")
    gram_size: int = setting(256, min=VGG_MIN_SIZE, help="long side of the VGG input for `gram_loss`")
    vgg_weights: str = setting("imagenet", choices=VGG_WEIGHTS, help=(
        "VGG16 backbone of `gram_loss` and LPIPS; `random` for tests and the demo (numbers mean nothing)"))


@dataclass
class Thresholds:
    """The median-of-seeds acceptance criteria (docs/METHOD.md, section 5); the defaults are the design's."""

    frames: int = setting(8, min=1, help="frames 1..N are judged, N = min(frames, T-1)")
    edge_ratio: float = setting(0.95, min=0, help="median-of-seeds mean `edge_loss`, guided / off, at most this")
    edge_frames_fraction: float = setting(0.6, min=0, max=1, help=(
        "guided `edge_loss` not above off's on at least this share of frames"))
    gram_ratio: float = setting(0.98, min=0, help="same ratio for `gram_loss` (judged when `ttlg.gram_scale` > 0)")
    lpips_prev_min: float = setting(0.005, min=0, max=1, help=(
        "mean `lpips_to_prev` above this, and below mean `lpips_to_init`"))
    lpips_init_min: float = setting(0.01, min=0, max=1, help="mean `lpips_to_init` above this")
    warp_ratio: float = setting(1.0, min=0, help=(
        "median-of-seeds mean `warp_error`, guided / off, at most this (1.0: not worse)"))
    drift_ratio: float = setting(1.0, min=0, help=(
        "median-of-seeds mean `color_drift` over the last quarter of the judged frames, guided / off, at most"
        " this (1.0: guidance must not let colours drift more)"))


LOGGER_BACKENDS = ("none", "mlflow")


@dataclass
class LoggerSettings:
    """``logger/``: experiment tracking. Logging reads what a run wrote and never changes its frames."""

    backend: str = setting("none", choices=LOGGER_BACKENDS, help=(
        "`mlflow` (`logger=mlflow`): every job an MLflow run, a sweep a parent run"))
    tracking_uri: Optional[str] = setting(None, path="output", help=(
        "MLflow store; null = `sqlite:///<cwd>/runs/mlflow.db` (artifacts in `runs/mlflow-artifacts`); a "
        "server URI works the same"))
    experiment_name: str = setting("qvedit", help="the MLflow experiment runs go to")


TUNING_OBJECTIVES = ("edge_loss", "gram_loss", "warp_error")


@dataclass
class TuningSettings:
    """``tuning/``: what a search trial returns (``hparams_search=ttlg_optuna`` sets it): the guided / unguided
    ratio of the mean of each named metrics.csv column, the unguided clip made once per sweep."""

    objectives: list = setting(default_factory=list, choices=TUNING_OBJECTIVES, help=(
        "a search trial returns, for each named column (`edge_loss`, `gram_loss`, `warp_error`), its guided /"
        " unguided mean ratio; empty = not a search"))  # each entry one of the choices
