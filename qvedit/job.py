"""One run of ``python -m qvedit``, from the composed config to the published clip; the one place that
builds runtime objects from settings.

``run(cfg, run_dir)`` is the whole path: every value checked against the schema (``check_values``), the
torchrun team started, then ``Job.prepare(cfg, settings, run_dir, team)`` instantiates every group once and
checks everything that can be checked without the model (inputs and the clip's plan, output folder, resume
manifest, device and perf settings, LoRA files, optical flow, tracking store); ``job.make()`` loads the
model and makes the clip (and its unguided twin with ``compare_unguided``); ``job.publish(...)`` writes the
previews, the video, ``report.html`` and the summary, and fills the tracking run.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qvedit import locks
from qvedit.devices import check_device
from qvedit.editor import edit_clip
from qvedit.errors import QveditError
from qvedit.files import drop_staged
from qvedit.first_frame import START_OVER_KEYS, EditedFirstFrame, FirstFrameEdit
from qvedit.guidance.tiny_decoder import check_decoder
from qvedit.io.flow import ClipFlow
from qvedit.io.frames import FrameWriter
from qvedit.io.layout import RunLayout
from qvedit.io.preview import write_comparison, write_previews
from qvedit.io.source import FrameSource, IOSettings, open_source
from qvedit.models.diffusers_compat import warn_if_untested_diffusers
from qvedit.models.family import family_for
from qvedit.models.fp8 import torchao_only_for_fp8
from qvedit.models.loading import availability_problem, load_pipeline
from qvedit.models.schedule import planned_schedule_problem
from qvedit.models.lora import check_model
from qvedit.models.parallel import Team, start_team
from qvedit.models.perf import apply_perf, check_perf
from qvedit.models.step_cache import check_cache
from qvedit.outputs import ClipOutputs, check_or_record, start_over
from qvedit.plan import ClipPlan, cpu_speed_warnings
from qvedit.report.drift import plot_drift
from qvedit.report.html import write_run_html
from qvedit.report.metrics import FrameMetrics
from qvedit.report.summary import run_summary
from qvedit.report.tracking import JobTracking
from qvedit.schedule.driver import make_segments
from qvedit.schedule.outputs import SegmentOutputs
from qvedit.schedule.plan import SegmentPlan
from qvedit.schedule.pool import LocalPool
from qvedit.schedule.ray_pool import RayPool, connect, ray_problem
from qvedit.schedule.worker import GUIDED, UNGUIDED, WorkerParts, WorkerSet
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.io import DemoIO, FirstFrameSettings
from qvedit.settings.model import ModelSettings, PerfSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.schedule import ScheduleSettings
from qvedit.settings.schema import check_values, frame_settings, input_paths, scale_keys
from qvedit.settings.start import StartSettings
from qvedit.trust import build

log = logging.getLogger("qvedit")


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Edit the clip ``cfg`` describes into ``run_dir``: the one path from a composed config to the published clip.

    Args:
        cfg: the composed config (``conf/`` and the command line's overrides).
        run_dir: the run's folder (Hydra's output folder).

    Returns:
        The folder the frames went to. A problem the user can fix is a QveditError of one line, raised
        before the model loads wherever it can be found then.
    """
    check_values(cfg)  # every value, before anything is built or loaded
    settings = RunSettings.of(cfg)
    parallel = build(cfg.parallel)
    refuse(parallel.conflict(settings.true_cfg_scale), schedule_of(cfg).parallel_conflict(parallel.degree))
    team = start_team(parallel, settings.device)
    try:
        if team.size > 1 and in_sweep():
            raise QveditError("a torchrun team edits one clip: run sweeps without torchrun (hydra/launcher=ray "
                              "gives each job its own GPU)")
        return Job.prepare(cfg, settings, run_dir, team).run()  # ranks other than 0 keep only their share of work
    finally:
        team.close()
        drop_staged()
        locks.release_all()


def refuse(*problems: Optional[str]) -> None:
    """Raise the first of ``problems`` (the one-line answers of the settings' cross-key rules) that is not None."""
    for problem in problems:
        if problem:
            raise QveditError(problem)


def schedule_of(cfg: DictConfig) -> ScheduleSettings:
    """``schedule/``'s settings; a run folder's config written before the group existed made a chain."""
    return build(cfg.schedule) if "schedule" in cfg else ScheduleSettings()


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@dataclass
class Job:
    """One run's objects, each group built once, and the steps that make and publish its clip."""

    cfg: DictConfig
    settings: RunSettings
    team: Team
    device: str
    layout: RunLayout
    io: IOSettings
    source: FrameSource
    plan: ClipPlan
    outputs: ClipOutputs
    ttlg: TTLGSettings
    model: ModelSettings
    perf: PerfSettings
    flow: Optional[ClipFlow]
    tracking: Optional[JobTracking]
    anchor: AnchorSettings
    schedule: ScheduleSettings
    first_frame: Optional[FirstFrameEdit] = None  # frame 0 edited from the source's (first_frame.prompt)
    starts_over: bool = False  # the frames folder holds a clip whose frame 0 was another candidate
    start: StartSettings = field(default_factory=StartSettings)  # how each frame starts (start/)
    pipe: object = None  # the loaded pipeline (None where Ray workers hold it: schedule.workers >= 2)
    pool: Optional[RayPool] = None  # schedule.workers >= 2: the Ray workers

    @classmethod
    def prepare(cls, cfg: DictConfig, settings: RunSettings, run_dir: Path, team: Team) -> "Job":
        """Build and check everything a run needs but the model (one instantiation per group).

        Args:
            cfg: the composed config, its values checked (``check_values``).
            settings: its top-level keys (``RunSettings.of(cfg)``).
            run_dir: the run's folder.
            team: this process's place in the torchrun team (a team of one without torchrun).

        Returns:
            The job, ready to ``run()``.
        """
        device = team.device or settings.device
        ttlg, io, metrics, anchor = build(cfg.ttlg), build(cfg.io), build(cfg.metrics), build(cfg.anchor)
        model, perf, flow_settings, logger = build(cfg.model), build(cfg.perf), build(cfg.flow), build(cfg.logger)
        first_frame_settings, schedule, start = build(cfg.first_frame), schedule_of(cfg), build(cfg.start)
        torchao_only_for_fp8(perf.quantize)  # before the checks below may import diffusers (the scheduler's config)
        family = family_for(model)  # what the model's pipeline takes (qvedit.models.family)
        refuse(model.entry_problem(), model.family_problem(call_steps(settings, first_frame_settings)),
               first_frame_settings.conflict(), family.refusal(ttlg, perf, team.settings), family.start_problem(start),
               start.problem(settings.num_inference_steps), start.schedule_problem(schedule.segments),
               planned_schedule_problem(model, settings.num_inference_steps))
        layout = RunLayout.resolve(run_dir, io, metrics, settings.debug_dir, is_main=team.is_main)
        layout.check()
        refuse(layout.input_problem(input_paths(cfg), "hydra.sweep.dir" if in_sweep() else "hydra.run.dir"))
        source = open_source(io, layout)  # inputs are checked before the (slow) model load
        plan = ClipPlan.of(settings, source, family)  # and what they allow: frame count, sizes
        refuse(schedule.conflict(plan.total, anchor.every, anchor.first_frame_image, family.max_images),
               ray_problem(schedule, device, torch.cuda.device_count()) if schedule.on_ray else None)
        remote = schedule.on_ray and schedule.ray_address is not None  # the GPUs are the cluster's, not this machine's
        for warning in cpu_speed_warnings(device, settings, plan, model.real_weights):
            log.warning(warning)
        # Whether the model can load at all comes first, said together with what fails after it (the VGG
        # weights of the metrics), so one run names every problem a user must fix before loading.
        unloadable = availability_problem(model) if model.real_weights and team.is_main and not remote else None
        try:
            check_model(model)  # LoRA files (a hub LoRA fetched into its cache) and scheduler keys
            check_decoder(ttlg)  # ttlg.decoder=tiny: its weights file is there and fits
            frames = FrameWriter(layout.frames_dir)
            starts_over = check_or_record(frames.folder, frame_settings(cfg), START_OVER_KEYS)
            first_frame = FirstFrameEdit.prepare(first_frame_settings, cfg, settings, plan, source, layout, team) \
                if first_frame_settings.prompt is not None else None
            if not remote:  # on a cluster each worker checks its own GPU
                check_device(device)
                check_perf(perf, device, settings.dtype, team.size)  # fp8 on a GPU without FP8, offloading on the CPU
            check_cache(perf)  # perf.cache: settings diffusers takes
            # rank 0 scores frames; with Ray workers they do, and this process needs only the columns
            scorer = FrameMetrics(metrics, "cpu" if schedule.on_ray else device,
                                  quality=metrics.quality and team.is_main)
            outputs = ClipOutputs(frames, layout.metrics_csv, scorer, layout.debug_dir)
        except QveditError as err:
            raise QveditError(f"{unloadable}; and {err}" if unloadable else str(err)) from None
        if unloadable:
            raise QveditError(unloadable)
        if schedule.on_ray:  # after every other check: Ray takes seconds to start
            connect(schedule, device)
        elif device.startswith("cuda"):  # which physical GPU, for sweeps whose launcher hands out GPUs
            log.info("on %s: %s, CUDA_VISIBLE_DEVICES=%s", device, torch.cuda.get_device_name(device),
                     os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"))
        flow_guided = ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0
        try:
            flow = ClipFlow(flow_settings, source, plan.init_size, torch.device(device)) \
                if team.is_main and (metrics.quality or flow_guided or start.needs_flow) and not schedule.on_ray else None
        except QveditError as err:
            raise QveditError(f"start.noise={start.noise} start.strength={start.strength:g} follows the clip's optical "
                              f"flow: {err}" if start.needs_flow else str(err)) from None
        if team.is_main and not start.is_default:
            log.info("start: %s noise, %s%s", start.noise, f"the last {start.steps_run(settings.num_inference_steps)} "
                     f"of {settings.num_inference_steps} steps from the previous frame warped onto each"
                     if start.from_previous else "every step", "; the flow is estimated between edge maps (no source "
                     "frames: rougher)" if start.needs_flow and flow.from_edges else "")
        sweep_dir = Path(HydraConfig.get().sweep.dir) if in_sweep() else None
        tracking = JobTracking.start(logger, cfg, run_dir, sweep_dir) if team.is_main else None
        return cls(cfg, settings, team, device, layout, io, source, plan, outputs, ttlg, model, perf, flow, tracking,
                   anchor, schedule, first_frame, starts_over, start)

    def run(self) -> Path:
        """Make and publish the clip; returns its frames folder. A failure marks the tracking run failed."""
        try:
            paths = self.make()
            if self.first_frame_only:
                if self.team.is_main:
                    self.publish_first_frame()
            else:
                unguided_csv = self.make_unguided() if self.settings.compare_unguided and self.ttlg.enabled else None
                if self.team.is_main:
                    self.publish(paths, unguided_csv)
        except BaseException:
            if self.tracking is not None:
                self.tracking.fail()
            raise
        finally:
            if self.pool is not None:
                self.pool.close()
        if self.tracking is not None:
            layout = self.layout
            self.tracking.finish(layout.metrics_csv, [*layout.previews, layout.unguided_comparison, layout.report,
                                                      layout.first_frame, layout.run_dir / ".hydra"])
        return self.outputs.folder

    def make(self) -> list[Path]:
        warn_if_untested_diffusers()
        if self.schedule.on_ray:  # the workers load the pipeline, one each
            resolved = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
            self.pool = RayPool(functools.partial(build_worker, resolved, str(self.layout.run_dir)), self.schedule,
                                self.device)
        else:
            self.pipe = load_pipeline(self.model, self.device, self.settings.dtype, self.perf)
            refuse(self.plan.family.loaded_problem(self.pipe, self.plan.condition_image,
                                                   call_steps(self.settings, build(self.cfg.first_frame))))
            apply_perf(self.pipe, self.perf)
            self.team.share_work(self.pipe)
        if self.first_frame is not None:  # the picked candidate is frame 0 from here on
            if self.pool is not None:  # on a worker's pipeline; the edit comes back with what it made
                self.first_frame, frame0 = self.pool.on_one(functools.partial(edit_first_frame, self.first_frame))
            else:
                frame0 = self.first_frame.make(self.pipe)
            self.source = EditedFirstFrame(self.source, frame0)
            if self.first_frame_only:
                return []
        if self.starts_over:
            self.restart_clip(self.outputs.folder)
        return self.edit(self.outputs, self.ttlg, GUIDED)

    def edit(self, outputs: ClipOutputs, ttlg: TTLGSettings, variant: str) -> list[Path]:
        """Make one clip into ``outputs``: the rolling loop (``schedule=chain``), or keyframes and segments."""
        if not self.schedule.segments:
            return edit_clip(self.pipe, self.source, outputs, self.settings, ttlg, self.team, self.flow, self.anchor,
                             self.plan, self.start)
        bars = sys.stderr.isatty()
        if self.pipe is not None:
            self.pipe.set_progress_bar_config(disable=not bars, leave=False, desc="denoising")
        pool = self.pool or LocalPool(WorkerSet(WorkerParts(
            self.pipe, self.source, self.settings, self.ttlg, self.anchor, self.flow, self.plan, self.layout,
            self.outputs.metrics, self.segment_plan).segment_worker))
        return make_segments(pool, SegmentOutputs(outputs, self.segment_plan), self.source.init_image(), variant, bars)

    @property
    def segment_plan(self) -> SegmentPlan:
        return SegmentPlan(self.schedule, self.plan.total, self.anchor.first_frame_image, self.plan.family.max_images)

    @property
    def keyframes(self) -> list[int]:
        """The keyframes of ``schedule=segments`` (the reports mark the seams before them); none for a chain."""
        return self.segment_plan.keyframes if self.schedule.segments else []

    @property
    def first_frame_only(self) -> bool:
        return self.first_frame is not None and self.first_frame.settings.only

    def restart_clip(self, folder: Path) -> None:
        """first_frame.pick changed: the clip in ``folder`` began with another candidate; make it again."""
        removed = start_over(folder, frame_settings(self.cfg))
        log.info("first_frame.pick=%d: frame 0 is now that candidate, so the clip starts over; the %d frames in %s "
                 "that began with another candidate are replaced", self.first_frame.settings.pick, removed, folder)

    def make_unguided(self) -> Path:
        """``compare_unguided``: the same clip with guidance off, beside the guided one; returns its metrics.csv."""
        frames_dir, metrics_csv = self.layout.unguided
        frames = FrameWriter(frames_dir)
        unguided = {**frame_settings(self.cfg), **{key: 0.0 for key in scale_keys()}}
        if check_or_record(frames.folder, unguided, START_OVER_KEYS):
            start_over(frames.folder, unguided)
        log.info("compare_unguided: making the clip again with ttlg=off in %s", frames.folder)
        self.edit(ClipOutputs(frames, metrics_csv, self.outputs.metrics), TTLGSettings(), UNGUIDED)
        return metrics_csv

    def publish(self, paths: list[Path], unguided_csv: Optional[Path]) -> None:
        """Previews, the source's own outputs (an mp4), report.html, and the summary on the terminal."""
        layout, ttlg = self.layout, self.ttlg
        written = write_previews(self.source, paths, layout) + self.source.finish(paths, layout)
        scales = {name.removesuffix("_scale"): getattr(ttlg, name) for name in ttlg.scales() if getattr(ttlg, name)}
        summary = run_summary(paths, all(p.exists() for p in paths), written, layout.metrics_csv,
                              self.settings.num_inference_steps, scales, unguided_csv,
                              demo=isinstance(self.io, DemoIO), flow_from_edges=self.flow is not None
                              and self.flow.from_edges,
                              frame0=self.first_frame.describe() if self.first_frame is not None else None,
                              keyframes=self.keyframes, anchor=self.anchor.describe(),
                              video_notes=tuple(getattr(self.source, "video_notes", ())))
        log.info(summary[0].removeprefix("qvedit: "))
        previews = []
        if unguided_csv is not None:
            clips = {"ttlg=off": sorted(layout.unguided[0].glob("*.png")), "guided": paths}
            previews.append((write_comparison(self.source, clips, layout.unguided_comparison),
                             "edge map | ttlg=off | guided"))
        previews += [(layout.previews[1], "edge map | output, every frame"), (layout.previews[0], "contact sheet")]
        drift = self.plot_drift(unguided_csv)
        if drift is not None:
            previews.append((drift, "drift per frame: colour, edge offset, LPIPS and Gram loss to frame 0"))
        page = summary[:summary.index("next:")] if "next:" in summary else summary  # next steps: the terminal's
        write_run_html(layout.run_dir, page, {**frame_settings(self.cfg), "device": self.device}, layout.metrics_csv,
                       previews, self.first_frame.report_section() if self.first_frame is not None else None,
                       videos=[p for p in written if p.suffix == ".mp4"], keyframes=self.keyframes)
        if not in_sweep():
            print("\n".join(summary), flush=True)

    def publish_first_frame(self) -> None:
        """``first_frame.only``: the candidates and their sheet are made; report.html and the summary say so."""
        summary = self.first_frame.summary()
        log.info(summary[0].removeprefix("qvedit: "))
        write_run_html(self.layout.run_dir, summary[:summary.index("next:")], {**frame_settings(self.cfg),
                       "device": self.device}, self.layout.metrics_csv, [], self.first_frame.report_section())
        if not in_sweep():
            print("\n".join(summary), flush=True)

    def plot_drift(self, unguided_csv: Optional[Path]) -> Optional[Path]:
        """``drift.png``: each drift metric of the clip per frame, beside the unguided clip's when it was made."""
        csvs = {"this clip": self.layout.metrics_csv} if unguided_csv is None else \
            {"guided": self.layout.metrics_csv, "ttlg=off": unguided_csv}
        if not all(path.is_file() for path in csvs.values()):
            return None
        clips = {name: {self.settings.seed: pd.read_csv(path)} for name, path in csvs.items()}
        return plot_drift(clips, None, "drift over the clip", self.layout.drift_plot, self.keyframes)


def call_steps(settings: RunSettings, first_frame: FirstFrameSettings) -> dict[str, int]:
    """{key: steps} of every kind of pipeline call the run makes: the clip's frames, and frame 0's edit if it has
    one."""
    steps = {"num_inference_steps": settings.num_inference_steps}
    if first_frame.prompt is not None:
        steps["first_frame.num_inference_steps"] = first_frame.num_inference_steps
    return steps


def edit_first_frame(first_frame: FirstFrameEdit, pipe) -> tuple[FirstFrameEdit, object]:
    """On a Ray worker: make frame 0's candidates on its pipeline; the edit (what it made now) and the pick."""
    return first_frame, first_frame.make(pipe)


def build_worker(cfg: DictConfig, run_dir: str) -> WorkerParts:
    """In a Ray worker of ``schedule.workers >= 2`` (``qvedit.schedule.ray_pool.FrameActor``), once: check this
    machine's device, load the pipeline and build the clip's objects from the run's config (its interpolations
    resolved by the driver). The driver holds the run's folders; the worker writes there under its lock."""
    settings = RunSettings.of(cfg)
    device = "cpu" if settings.device == "cpu" else "cuda"  # Ray hands each worker one GPU: its cuda:0
    ttlg, io, metrics, anchor = build(cfg.ttlg), build(cfg.io), build(cfg.metrics), build(cfg.anchor)
    model, perf, flow_settings, schedule = build(cfg.model), build(cfg.perf), build(cfg.flow), schedule_of(cfg)
    layout = RunLayout.resolve(Path(run_dir), io, metrics, settings.debug_dir)
    locks.delegate(layout.edges_dir)
    source = open_source(io, layout)
    plan = ClipPlan.of(settings, source, family_for(model))
    torchao_only_for_fp8(perf.quantize)
    check_device(device)
    check_perf(perf, device, settings.dtype, 1)
    check_model(model)
    check_decoder(ttlg)
    pipe = load_pipeline(model, device, settings.dtype, perf)
    refuse(plan.family.loaded_problem(pipe, plan.condition_image, call_steps(settings, build(cfg.first_frame))))
    apply_perf(pipe, perf)
    pipe.set_progress_bar_config(disable=True)  # the driver's one line says how the clip goes
    scorer = FrameMetrics(metrics, device)
    flow_guided = ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0
    flow = ClipFlow(flow_settings, source, plan.init_size, torch.device(device)) \
        if metrics.quality or flow_guided else None
    return WorkerParts(pipe, source, settings, ttlg, anchor, flow, plan, layout, scorer,
                       SegmentPlan(schedule, plan.total, anchor.first_frame_image, plan.family.max_images))
