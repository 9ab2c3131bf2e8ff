"""What a Ray worker of ``schedule.workers >= 2`` builds from the run's settings (``build_worker``), and frame 0's
edit made on one (``edit_first_frame``); ``qvedit.run.job`` hands both to ``qvedit.run.schedule.ray_pool.RayPool``."""

from __future__ import annotations

from pathlib import Path

import torch

from qvedit.core import locks
from qvedit.core.errors import QveditError
from qvedit.guidance.tiny_decoder import check_decoder
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.layout import RunLayout
from qvedit.io.source import open_source
from qvedit.models.devices import check_device
from qvedit.models.family import family_for
from qvedit.models.fp8 import torchao_only_for_fp8
from qvedit.models.loading import load_pipeline
from qvedit.models.lora import check_model
from qvedit.models.perf import apply_perf, check_perf
from qvedit.run.first_frame import FirstFrameEdit
from qvedit.run.frame_plan import ClipPlan
from qvedit.run.job_settings import JobSettings, call_steps
from qvedit.run.pipeline_call import show_denoising_bars
from qvedit.run.schedule.plan import SegmentPlan
from qvedit.run.schedule.worker import WorkerParts
from qvedit.scoring.frame_metrics import FrameMetrics


def edit_first_frame(first_frame: FirstFrameEdit, pipe) -> tuple[FirstFrameEdit, object]:
    """On a Ray worker: make frame 0's candidates on its pipeline; the edit (what it made now) and the pick."""
    return first_frame, first_frame.make(pipe)


def build_worker(job: JobSettings, run_dir: str) -> WorkerParts:
    """In a Ray worker (``qvedit.run.schedule.ray_pool.FrameActor``), once: check this machine's device, load the
    pipeline and build the clip's objects from the run's settings. The driver holds the run's folders; the worker
    writes there under its lock."""
    settings, ttlg, model, perf, anchor = job.run, job.ttlg, job.model, job.perf, job.anchor
    device = "cpu" if settings.device == "cpu" else "cuda"  # Ray hands each worker one GPU: its cuda:0
    layout = RunLayout.resolve(Path(run_dir), job.io, job.metrics, settings.debug_dir)
    locks.delegate(layout.edges_dir)
    source = open_source(job.io, layout)
    plan = ClipPlan.of(settings, source, family_for(model))
    torchao_only_for_fp8(perf.quantize)
    check_device(device)
    check_perf(perf, device, settings.dtype, 1)
    check_model(model)
    check_decoder(ttlg)
    pipe = load_pipeline(model, device, settings.dtype, perf)
    problem = plan.family.loaded_problem(pipe, plan.condition_image, call_steps(settings, job.first_frame))
    if problem:
        raise QveditError(problem)
    apply_perf(pipe, perf)
    show_denoising_bars(pipe, False)  # the driver's one line says how the clip goes
    scorer = FrameMetrics(job.metrics, device)
    flow_guided = ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0
    flow = ClipFlow(job.flow, source, plan.init_size, torch.device(device)) \
        if job.metrics.quality or flow_guided else None
    return WorkerParts(pipe, source, settings, ttlg, anchor, flow, plan, layout, scorer,
                       SegmentPlan(job.schedule, plan.total, anchor.first_frame_image, plan.family.max_images))
