"""Experiment tracking (``logger=mlflow``): every job an MLflow run, a sweep a parent run above its jobs.

A job's run is created before the model loads (so an unreachable or read-only store fails the run at
once, in one line), and filled after the clip: the resolved config flattened as params, every column
of ``metrics.csv`` as a metric with ``step`` = frame index, the frame-affecting settings and the
versions as tags, the previews, ``metrics.csv``, ``.hydra/`` and ``report.html`` as artifacts. The
sweep's parent run (``SweepTracking``, a Hydra callback) gets the acceptance numbers, the verdict and
the sweep's report files. Logging only reads what the run wrote: frames are the same with it or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qvedit.core.errors import QveditError
from qvedit.report.confdiff import flatten
from qvedit.settings.report import LoggerSettings

log = logging.getLogger(__name__)

PARENT_RUN_FILE = ".mlflow_parent_run"  # in a sweep folder: the id of the sweep's parent run
REPO = Path(__file__).resolve().parents[2]


def default_tracking_uri() -> str:
    return f"sqlite:///{(Path.cwd() / 'runs' / 'mlflow.db').resolve()}"


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise QveditError("logger=mlflow needs MLflow: pip install -e \".[tracking]\" (or run with logger=none)") \
            from None
    return mlflow


@contextlib.contextmanager
def _quick_requests() -> Iterator[None]:
    """No retries for the start check: a server that is down fails the run now, not after minutes."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


class MlflowStore:
    """An MLflow tracking store and this project's experiment in it."""

    def __init__(self, settings: LoggerSettings):
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = settings.tracking_uri or default_tracking_uri()
        self.mlflow = mlflow
        try:
            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            with _quick_requests():
                # an unknown scheme fails here (KeyError or MLflow's own exception, by version)
                self.client = MlflowClient(tracking_uri=self.uri)
                experiment = self.client.get_experiment_by_name(settings.experiment_name)
                if experiment is None:
                    artifacts = None
                    if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                        artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").as_uri()
                    self.experiment_id = self.client.create_experiment(settings.experiment_name,
                                                                       artifact_location=artifacts)
                else:
                    self.experiment_id = experiment.experiment_id
        except Exception as err:
            raise QveditError(f"the MLflow tracking store {self.uri} cannot be used ({_short(err)}): start the "
                              "server or fix logger.tracking_uri, or run with logger=none") from None

    def create_run(self, name: str, tags: dict[str, str]) -> str:
        try:
            with _quick_requests():
                return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        except Exception as err:
            raise QveditError(f"the MLflow tracking store {self.uri} refused a new run ({_short(err)}): fix "
                              "logger.tracking_uri or run with logger=none") from None

    def log_files(self, run_id: str, paths: list[Path], folder: Optional[str] = None) -> None:
        for path in paths:
            if Path(path).is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=Path(path).name)
            elif Path(path).is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=folder)


def metric_key(text: str) -> str:
    """A name MLflow accepts as a metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]+", "_", text).strip("_")


def versions() -> dict[str, str]:
    import diffusers
    import torch

    import qvedit

    tags = {"qvedit.version": qvedit.__version__, "diffusers.version": diffusers.__version__,
            "torch.version": torch.__version__,
            "device.name": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:
        tags["git.commit"] = commit.stdout.strip()
    return tags


class JobTracking:
    """One job's MLflow run: created by ``start`` (before the model loads), filled by ``finish``."""

    def __init__(self, store: MlflowStore, run_id: str):
        self.store, self.run_id = store, run_id

    @classmethod
    def start(cls, settings: LoggerSettings, frames: dict[str, object], config: dict, run_dir: Path,
              sweep_dir: Optional[Path] = None) -> Optional["JobTracking"]:
        """The job's run, nested under the sweep's parent run when there is one; None with logger=none.

        Args:
            settings: ``logger/``'s settings.
            frames: the run's frame settings (``frame_settings``): each a ``frames.<key>`` tag.
            config: the composed config, resolved, as plain data: every key a parameter.
            run_dir: the run's folder (the run's name).
            sweep_dir: the sweep's folder, whose parent run the job's nests under.
        """
        if settings.backend == "none":
            return None
        store = MlflowStore(settings)
        tags = {**versions(), **{f"frames.{k}": str(v) for k, v in frames.items()}, "run_dir": str(run_dir)}
        parent = sweep_dir / PARENT_RUN_FILE if sweep_dir else None
        if parent is not None and parent.is_file():
            tags["mlflow.parentRunId"] = parent.read_text().strip()
        tracking = cls(store, store.create_run(run_dir.name, tags))
        tracking._log_params(flatten(config))
        return tracking

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in sorted(params.items()) if not key.endswith("_target_")]
        for start in range(0, len(items), 100):
            self.store.client.log_batch(self.run_id, params=items[start:start + 100])

    def finish(self, metrics: pd.DataFrame, metrics_csv: Path, files: list[Path], status: str = "FINISHED") -> None:
        """Every column of the clip's metrics table by frame, the files (and ``metrics_csv``) as artifacts, and
        the run's end."""
        try:
            if len(metrics.columns):
                log_frame_metrics(self.store, self.run_id, metrics)
            self.store.log_files(self.run_id, [*files, metrics_csv])
            self.store.client.set_terminated(self.run_id, status)
        except Exception as err:
            raise QveditError(f"the frames are kept, but logging them to MLflow ({self.store.uri}) failed: "
                              f"{_short(err)}") from None

    def fail(self) -> None:
        with contextlib.suppress(Exception):
            self.store.client.set_terminated(self.run_id, "FAILED")


def log_frame_metrics(store: MlflowStore, run_id: str, metrics: pd.DataFrame) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(column, float(value), now, int(frame)) for column in metrics.columns if column != "frame"
             for frame, value in zip(metrics["frame"], metrics[column]) if pd.notna(value)]
    for start in range(0, len(items), 1000):
        store.client.log_batch(run_id, metrics=items[start:start + 1000])


class SweepTracking(Callback):
    """Hydra callback: with ``logger=mlflow`` a sweep is one parent run; its jobs nest under it, and at
    the end it gets the acceptance numbers, the verdict and the sweep's report files."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        settings = _settings(config)
        if settings is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        store = MlflowStore(settings)
        run_id = store.create_run(f"sweep {sweep_dir.name}", {**versions(), "sweep_dir": str(sweep_dir)})
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        settings = _settings(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        if settings is None or not (sweep_dir / PARENT_RUN_FILE).is_file():
            return
        store, run_id = MlflowStore(settings), (sweep_dir / PARENT_RUN_FILE).read_text().strip()
        try:
            from mlflow.entities import Metric

            from qvedit.report.acceptance import judge_sweep

            verdict = judge_sweep(sweep_dir)
            now = int(time.time() * 1000)
            store.client.log_batch(run_id, metrics=[
                Metric(metric_key(f"{comparison.label}/{c.name}"), float(c.value), now, 0)
                for comparison in verdict.comparisons for c in comparison.criteria if c.value is not None])
            store.client.set_tag(run_id, "verdict", "PASS" if verdict.passed else "FAIL")
            store.log_files(run_id, sorted(p for p in sweep_dir.iterdir() if p.is_file()
                                           and p.suffix in (".md", ".csv", ".png", ".gif", ".html")))
            store.client.set_terminated(run_id, "FINISHED")
        except Exception as err:  # the sweep's own files are written; tracking must not hide them
            log.warning("the sweep's MLflow parent run was not completed: %s", _short(err))


def _settings(config: DictConfig) -> Optional[LoggerSettings]:
    node = OmegaConf.select(config, "logger", default=None)
    if node is None or node.get("backend", "none") == "none":
        return None
    return LoggerSettings(**{k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                             if not k.startswith("_")})
