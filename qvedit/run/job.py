"""One run of ``python -m qvedit``, from the composed config to the published clip; the one place that
builds runtime objects from settings.

``run(cfg, run_dir)`` is the whole path: every value checked against the schema (``check_values``), the
config turned into typed settings once (``job_settings``: below this module nothing reads the config), then
``run_job`` starts the torchrun team and ``Job.prepare(settings, run_dir, team)`` checks everything that can
be checked without the model (inputs and the clip's plan, output folder, resume manifest, device and perf
settings, LoRA files, optical flow, tracking store); ``job.make()`` loads the model and makes the clip (and
its unguided twin with ``compare_unguided``); ``job.publish(...)`` writes the previews, the video,
``report.html`` and the summary, and fills the tracking run. The run hands back a ``JobResult``: the frames,
the metrics table and the summary, which the report, the drift plot and a search's objectives use as they are.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qvedit.core import locks
from qvedit.core.errors import QveditError
from qvedit.core.files import drop_staged, write_text_atomic
from qvedit.guidance.tiny_decoder import check_decoder
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.frames import FrameWriter
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource, open_source
from qvedit.models.devices import check_device
from qvedit.models.diffusers_compat import warn_if_untested_diffusers
from qvedit.models.family import family_for
from qvedit.models.fp8 import torchao_only_for_fp8
from qvedit.models.loading import availability_problem, load_pipeline
from qvedit.models.lora import check_model
from qvedit.models.parallel import Team, start_team
from qvedit.models.perf import apply_perf, check_perf
from qvedit.models.schedule import planned_schedule_problem
from qvedit.models.step_cache import check_cache
from qvedit.report.drift import plot_drift
from qvedit.report.html import write_run_html
from qvedit.report.previews import write_comparison, write_previews
from qvedit.report.summary import run_summary
from qvedit.report.tracking import JobTracking
from qvedit.report.tuning import REFERENCE, objectives, one_at_a_time
from qvedit.run.clip_editor import edit_clip
from qvedit.run.config_values import check_values
from qvedit.run.first_frame import START_OVER_KEYS, EditedFirstFrame, FirstFrameEdit
from qvedit.run.frame_outputs import MANIFEST, ClipOutputs, check_or_record, start_over
from qvedit.run.frame_plan import ClipPlan, cpu_speed_warnings
from qvedit.run.job_result import JobResult, metrics_table
from qvedit.run.job_settings import JobSettings, call_steps, job_settings, search_reference, unguided
from qvedit.run.job_worker import build_worker, edit_first_frame
from qvedit.run.pipeline_call import show_denoising_bars, shows_bars
from qvedit.run.schedule.driver import make_segments
from qvedit.run.schedule.outputs import SegmentOutputs
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.run.schedule.pool import LocalPool
from qvedit.run.schedule.ray_pool import RayPool, connect, ray_problem
from qvedit.run.schedule.worker import GUIDED, UNGUIDED, WorkerParts, WorkerSet
from qvedit.scoring.frame_metrics import FrameMetrics
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.io import DemoIO
from qvedit.settings.schema import scale_keys

log = logging.getLogger("qvedit")


def run(cfg: DictConfig, run_dir: Path) -> JobResult:
    """Edit the clip ``cfg`` describes into ``run_dir``: the one path from a composed config to the published clip.

    Args:
        cfg: the composed config (``conf/`` and the command line's overrides).
        run_dir: the run's folder (Hydra's output folder).

    Returns:
        What the run made. A problem the user can fix is a QveditError of one line, raised before the model
        loads wherever it can be found then.
    """
    check_values(cfg)  # every value, before anything is built or loaded
    return run_job(job_settings(cfg), run_dir)


def run_job(settings: JobSettings, run_dir: Path) -> JobResult:
    """``run`` from typed settings: the torchrun team started, the clip made and published into ``run_dir``."""
    parallel = settings.parallel
    refuse(parallel.conflict(settings.run.true_cfg_scale), settings.schedule.parallel_conflict(parallel.degree))
    team = start_team(parallel, settings.run.device)
    try:
        if team.size > 1 and in_sweep():
            raise QveditError("a torchrun team edits one clip: run sweeps without torchrun (hydra/launcher=ray "
                              "gives each job its own GPU)")
        return Job.prepare(settings, run_dir, team).run()  # ranks other than 0 keep only their share of work
    finally:
        team.close()
        drop_staged()
        locks.release_all()


def trial_objectives(result: JobResult, sweep_dir: Path) -> Optional[tuple[float, ...]]:
    """A search trial's objectives (``tuning.objectives``; None without): its clip's metrics against its unguided
    reference's, made once into ``<sweep>/reference_off`` by the first trial that needs it (the others find it
    finished: a resume that makes nothing)."""
    names = list(result.settings.tuning.objectives)
    if not names:
        return None
    with one_at_a_time(sweep_dir):
        reference = run_job(search_reference(result.settings), sweep_dir / REFERENCE)
    return objectives(names, result.metrics, reference.metrics)


def refuse(*problems: Optional[str]) -> None:
    """Raise the first of ``problems`` (the one-line answers of the settings' cross-key rules) that is not None."""
    for problem in problems:
        if problem:
            raise QveditError(problem)


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@dataclass
class Job:
    """One run's settings, the objects built from them, and the steps that make and publish its clip."""

    settings: JobSettings
    team: Team
    device: str
    layout: RunLayout
    source: FrameSource
    plan: ClipPlan
    outputs: ClipOutputs
    flow: Optional[ClipFlow]
    tracking: Optional[JobTracking]
    first_frame: Optional[FirstFrameEdit] = None  # frame 0 edited from the source's (first_frame.prompt)
    starts_over: bool = False  # the frames folder holds a clip whose frame 0 was another candidate
    pipe: object = None  # the loaded pipeline (None where Ray workers hold it: schedule.workers >= 2)
    pool: Optional[RayPool] = None  # schedule.workers >= 2: the Ray workers

    @classmethod
    def prepare(cls, job: JobSettings, run_dir: Path, team: Team) -> "Job":
        """Check everything a run needs but the model.

        Args:
            job: the run's settings (``job_settings(cfg)``).
            run_dir: the run's folder.
            team: this process's place in the torchrun team (a team of one without torchrun).

        Returns:
            The job, ready to ``run()``.
        """
        settings, ttlg, model, perf, start, schedule = job.run, job.ttlg, job.model, job.perf, job.start, job.schedule
        device = team.device or settings.device
        torchao_only_for_fp8(perf.quantize)  # before the checks below may import diffusers (the scheduler's config)
        family = family_for(model)  # what the model's pipeline takes (qvedit.models.family)
        refuse(model.entry_problem(), model.family_problem(call_steps(settings, job.first_frame)),
               job.first_frame.conflict(), family.refusal(ttlg, perf, team.settings),
               start.problem(settings.num_inference_steps), start.schedule_problem(schedule.segments),
               planned_schedule_problem(model, settings.num_inference_steps))
        layout = RunLayout.resolve(run_dir, job.io, job.metrics, settings.debug_dir, is_main=team.is_main)
        layout.check()
        refuse(layout.input_problem(list(job.inputs), "hydra.sweep.dir" if in_sweep() else "hydra.run.dir"))
        source = open_source(job.io, layout)  # inputs are checked before the (slow) model load
        plan = ClipPlan.of(settings, source, family)  # and what they allow: frame count, sizes
        refuse(schedule.conflict(plan.total, job.anchor.every, job.anchor.first_frame_image, family.max_images),
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
            starts_over = check_or_record(frames.folder, job.frames, START_OVER_KEYS)
            first_frame = FirstFrameEdit.prepare(job.first_frame, job.frames, settings, plan, source, layout, team) \
                if job.first_frame.prompt is not None else None
            if not remote:  # on a cluster each worker checks its own GPU
                check_device(device)
                check_perf(perf, device, settings.dtype, team.size)  # fp8 on a GPU without FP8, offloading on the CPU
            check_cache(perf)  # perf.cache: settings diffusers takes
            # rank 0 scores frames; with Ray workers they do, and this process needs only the columns
            scorer = FrameMetrics(job.metrics, "cpu" if schedule.on_ray else device,
                                  quality=job.metrics.quality and team.is_main)
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
            flow = ClipFlow(job.flow, source, plan.init_size, torch.device(device)) if team.is_main and (
                job.metrics.quality or flow_guided or start.needs_flow) and not schedule.on_ray else None
        except QveditError as err:
            raise QveditError(f"start.noise={start.noise} start.strength={start.strength:g} follows the clip's optical "
                              f"flow: {err}" if start.needs_flow else str(err)) from None
        if team.is_main and not start.is_default:
            log.info("start: %s noise, %s%s", start.noise, f"the last {start.steps_run(settings.num_inference_steps)} "
                     f"of {settings.num_inference_steps} steps from the previous frame warped onto each"
                     if start.from_previous else "every step", "; the flow is estimated between edge maps (no source "
                     "frames: rougher)" if start.needs_flow and flow.from_edges else "")
        sweep_dir = Path(HydraConfig.get().sweep.dir) if in_sweep() else None
        tracking = JobTracking.start(job.logger, job.frames, job.config, run_dir, sweep_dir) if team.is_main else None
        return cls(job, team, device, layout, source, plan, outputs, flow, tracking, first_frame, starts_over)

    def run(self) -> JobResult:
        """Make and publish the clip; returns what it made. A failure marks the tracking run failed."""
        try:
            result = self.result(self.make(), self.outputs, self.settings)
            if self.first_frame_only:
                if self.team.is_main:
                    result.summary = self.publish_first_frame(result)
            else:
                guided = self.settings.run.compare_unguided and self.settings.ttlg.enabled
                result.unguided = self.make_unguided() if guided else None
                if self.team.is_main:
                    result.summary = self.publish(result)
        except BaseException:
            if self.tracking is not None:
                self.tracking.fail()
            raise
        finally:
            if self.pool is not None:
                self.pool.close()
        if self.tracking is not None:
            layout = self.layout
            self.tracking.finish(result.metrics, layout.metrics_csv, [
                *layout.previews, layout.unguided_comparison, layout.report, layout.first_frame,
                layout.run_dir / ".hydra"])
        return result

    def result(self, paths: list[Path], outputs: ClipOutputs, settings: JobSettings) -> JobResult:
        """A clip's result once it is made into ``outputs``: its metrics table read once (rank 0's: it scored)."""
        metrics, means = metrics_table(outputs.metrics_csv) if self.team.is_main else (pd.DataFrame(), {})
        return JobResult(settings, self.layout.run_dir, outputs.folder, paths, outputs.metrics_csv, metrics, means)

    def make(self) -> list[Path]:
        warn_if_untested_diffusers()
        job = self.settings
        if job.schedule.on_ray:  # the workers load the pipeline, one each
            self.pool = RayPool(functools.partial(build_worker, job, str(self.layout.run_dir)), job.schedule,
                                self.device)
        else:
            self.pipe = load_pipeline(job.model, self.device, job.run.dtype, job.perf)
            refuse(self.plan.family.loaded_problem(self.pipe, self.plan.condition_image,
                                                   call_steps(job.run, job.first_frame)))
            apply_perf(self.pipe, job.perf)
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
        return self.edit(self.outputs, job.ttlg, GUIDED)

    def edit(self, outputs: ClipOutputs, ttlg: TTLGSettings, variant: str) -> list[Path]:
        """Make one clip into ``outputs``: the rolling loop (``schedule=chain``), or keyframes and segments."""
        job = self.settings
        if not job.schedule.segments:
            return edit_clip(self.pipe, self.source, outputs, job.run, ttlg, self.team, self.flow, job.anchor,
                             self.plan, job.start)
        bars = shows_bars(self.team)
        if self.pipe is not None:
            show_denoising_bars(self.pipe, bars)
        pool = self.pool or LocalPool(WorkerSet(WorkerParts(
            self.pipe, self.source, job.run, job.ttlg, job.anchor, self.flow, self.plan, self.layout,
            self.outputs.metrics, self.segment_plan).segment_worker))
        return make_segments(pool, SegmentOutputs(outputs, self.segment_plan), self.source.init_image(), variant, bars)

    @property
    def segment_plan(self) -> SegmentPlan:
        anchor = self.settings.anchor
        return SegmentPlan(self.settings.schedule, self.plan.total, anchor.first_frame_image, self.plan.family.max_images)

    @property
    def keyframes(self) -> list[int]:
        """The keyframes of ``schedule=segments`` (the reports mark the seams before them); none for a chain."""
        return self.segment_plan.keyframes if self.settings.schedule.segments else []

    @property
    def first_frame_only(self) -> bool:
        return self.first_frame is not None and self.first_frame.settings.only

    def restart_clip(self, folder: Path) -> None:
        """first_frame.pick changed: the clip in ``folder`` began with another candidate; make it again."""
        removed = start_over(folder, self.settings.frames)
        log.info("first_frame.pick=%d: frame 0 is now that candidate, so the clip starts over; the %d frames in %s "
                 "that began with another candidate are replaced", self.first_frame.settings.pick, removed, folder)

    def make_unguided(self) -> JobResult:
        """``compare_unguided``: the same clip with guidance off (``unguided``), beside the guided one."""
        twin = unguided(self.settings)
        frames_dir, metrics_csv = self.layout.unguided
        frames = FrameWriter(frames_dir)
        adopt_earlier_twin(frames.folder, {**self.settings.frames, **{key: 0.0 for key in scale_keys()}}, twin.frames)
        if check_or_record(frames.folder, twin.frames, START_OVER_KEYS):
            start_over(frames.folder, twin.frames)
        log.info("compare_unguided: making the clip again with ttlg=off in %s", frames.folder)
        outputs = ClipOutputs(frames, metrics_csv, self.outputs.metrics)
        return self.result(self.edit(outputs, twin.ttlg, UNGUIDED), outputs, twin)

    def publish(self, result: JobResult) -> list[str]:
        """Previews, the source's own outputs (an mp4), report.html, and the summary on the terminal (returned)."""
        layout, ttlg, paths, twin = self.layout, self.settings.ttlg, result.frames, result.unguided
        written = write_previews(self.source, paths, layout) + self.source.finish(paths, layout)
        scales = {name.removesuffix("_scale"): getattr(ttlg, name) for name in ttlg.scales() if getattr(ttlg, name)}
        summary = run_summary(paths, all(p.exists() for p in paths), written, result.metrics, result.means,
                              layout.metrics_csv, self.settings.run.num_inference_steps, scales,
                              None if twin is None else (twin.means, twin.metrics_csv.parent),
                              demo=isinstance(self.settings.io, DemoIO), flow_from_edges=self.flow is not None
                              and self.flow.from_edges,
                              frame0=self.first_frame.describe() if self.first_frame is not None else None,
                              keyframes=self.keyframes, anchor=self.settings.anchor.describe(),
                              video_notes=tuple(getattr(self.source, "video_notes", ())))
        log.info(summary[0].removeprefix("qvedit: "))
        previews = []
        if twin is not None:
            clips = {"ttlg=off": twin.frames, "guided": paths}
            previews.append((write_comparison(self.source, clips, layout.unguided_comparison),
                             "edge map | ttlg=off | guided"))
        previews += [(layout.previews[1], "edge map | output, every frame"), (layout.previews[0], "contact sheet")]
        drift = self.plot_drift(result)
        if drift is not None:
            previews.append((drift, "drift per frame: colour, edge offset, LPIPS and Gram loss to frame 0"))
        page = summary[:summary.index("next:")] if "next:" in summary else summary  # next steps: the terminal's
        write_run_html(layout.run_dir, page, {**self.settings.frames, "device": self.device}, result.metrics,
                       layout.metrics_csv, previews,
                       self.first_frame.report_section() if self.first_frame is not None else None,
                       videos=[p for p in written if p.suffix == ".mp4"], keyframes=self.keyframes)
        if not in_sweep():
            print("\n".join(summary), flush=True)
        return summary

    def publish_first_frame(self, result: JobResult) -> list[str]:
        """``first_frame.only``: the candidates and their sheet are made; report.html and the summary say so."""
        summary = self.first_frame.summary()
        log.info(summary[0].removeprefix("qvedit: "))
        write_run_html(self.layout.run_dir, summary[:summary.index("next:")], {**self.settings.frames,
                       "device": self.device}, result.metrics, self.layout.metrics_csv, [],
                       self.first_frame.report_section())
        if not in_sweep():
            print("\n".join(summary), flush=True)
        return summary

    def plot_drift(self, result: JobResult) -> Optional[Path]:
        """``drift.png``: each drift metric of the clip per frame, beside the unguided clip's when it was made."""
        tables = {"this clip": result.metrics} if result.unguided is None else \
            {"guided": result.metrics, "ttlg=off": result.unguided.metrics}
        if any(table.empty and not len(table.columns) for table in tables.values()):  # no metrics.csv
            return None
        clips = {name: {self.settings.run.seed: table} for name, table in tables.items()}
        return plot_drift(clips, None, "drift over the clip", self.layout.drift_plot, self.keyframes)


def adopt_earlier_twin(folder: Path, earlier: dict[str, object], twin: dict[str, object]) -> None:
    """A ``compare_unguided`` twin's frames recorded as an earlier qvedit recorded them (``earlier``: the guided
    run's settings with the ``ttlg`` scales at 0, which makes the same frames as ``unguided``) are recorded with the
    twin's settings, so such a run folder resumes; any other folder is left to ``check_or_record``."""
    if earlier == twin or not (folder / "00001.png").exists():
        return
    try:
        check_or_record(folder, earlier)  # with frames 0 and 1 there: checks, writes nothing
    except QveditError:
        return
    write_text_atomic(folder / MANIFEST, OmegaConf.to_yaml(OmegaConf.create(twin)))
