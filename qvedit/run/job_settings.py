"""A run's settings, typed, made once from the composed config at the top (``job_settings(cfg)``) and handed down:
below ``qvedit.run.job`` no function reads the config itself. Also what the unguided twin of a run is (``unguided``),
for ``compare_unguided`` and for a search's reference clip alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from qvedit.core.config_trust import build
from qvedit.run.config_values import frame_settings, input_paths
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.first_frame import FirstFrameSettings
from qvedit.settings.guidance import FlowSettings, TTLGSettings
from qvedit.settings.io import FramesIO, VideoIO
from qvedit.settings.model import ModelSettings, ParallelSettings, PerfSettings
from qvedit.settings.report import LoggerSettings, MetricsSettings, TuningSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.schedule import ScheduleSettings
from qvedit.settings.start import StartSettings


@dataclass(frozen=True)
class JobSettings:
    """Every group's settings of one run, each built once, and what is derived from the whole config."""

    run: RunSettings  # the top-level keys
    model: ModelSettings
    perf: PerfSettings
    parallel: ParallelSettings
    ttlg: TTLGSettings
    flow: FlowSettings
    io: FramesIO | VideoIO  # an io/ option (qvedit.io.source.IOSettings)
    metrics: MetricsSettings
    anchor: AnchorSettings
    start: StartSettings
    first_frame: FirstFrameSettings
    schedule: ScheduleSettings
    logger: LoggerSettings
    tuning: TuningSettings
    frames: dict[str, Any]  # {key: value} of the keys tagged frames=True (the frames folder's manifest)
    inputs: tuple[tuple[str, Path], ...]  # (key, path) of every file or folder a user's input is read from
    config: dict[str, Any]  # the composed config, resolved, as plain data: the record a tracking run keeps


def job_settings(cfg: DictConfig) -> JobSettings:
    """The typed settings of the composed config ``cfg`` (its values checked: ``check_values``); the one place a
    run reads its config. A group a run folder's config of an earlier version lacks takes its defaults."""

    def group(name: str, absent: Callable[[], Any]) -> Any:
        return build(cfg[name]) if name in cfg else absent()

    return JobSettings(
        run=RunSettings.of(cfg), model=build(cfg.model), perf=build(cfg.perf), parallel=build(cfg.parallel),
        ttlg=build(cfg.ttlg), flow=build(cfg.flow), io=build(cfg.io), metrics=build(cfg.metrics),
        anchor=build(cfg.anchor), start=build(cfg.start), first_frame=build(cfg.first_frame),
        schedule=group("schedule", ScheduleSettings), logger=build(cfg.logger), tuning=group("tuning", TuningSettings),
        frames=frame_settings(cfg), inputs=tuple(input_paths(cfg)),
        config=OmegaConf.to_container(cfg, resolve=True))


def unguided(settings: JobSettings) -> JobSettings:
    """The unguided twin of a run: the same clip with guidance off, every ``ttlg`` key at its default (so the twin
    does not depend on how guidance was set: the trials of a search share one) but ``ttlg.vgg_weights`` (what the
    run has of VGG's weights). Its frames folder records these settings."""
    ttlg = settings.ttlg.turned_off()
    frames = {key: getattr(ttlg, key.removeprefix("ttlg.")) if key.startswith("ttlg.") else value
              for key, value in settings.frames.items()}
    return dataclasses.replace(settings, ttlg=ttlg, frames=frames)


def search_reference(settings: JobSettings) -> JobSettings:
    """The reference clip of a search's trial (``tuning.objectives``): its unguided twin as a run of its own, with
    no twin of its own, nothing tracked and no objectives."""
    twin = unguided(settings)
    return dataclasses.replace(twin, run=dataclasses.replace(twin.run, compare_unguided=False),
                               logger=dataclasses.replace(twin.logger, backend="none"),
                               tuning=dataclasses.replace(twin.tuning, objectives=[]))


def call_steps(settings: RunSettings, first_frame: FirstFrameSettings) -> dict[str, int]:
    """{key: steps} of every kind of pipeline call the run makes: the clip's frames, and frame 0's edit if it has
    one."""
    steps = {"num_inference_steps": settings.num_inference_steps}
    if first_frame.prompt is not None:
        steps["first_frame.num_inference_steps"] = first_frame.num_inference_steps
    return steps
