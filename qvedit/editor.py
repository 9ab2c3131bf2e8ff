"""The rolling frame loop (docs/METHOD.md, section 2): frame k+1 = pipe(image=[edge_k, frame k]), one at a time."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image
from tqdm.auto import tqdm

from qvedit import stopping
from qvedit.anchor.color import ColorAnchor
from qvedit.devices import frame_memory, peak_memory_mib, reset_peak_memory
from qvedit.errors import QveditError
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.flow import FlowPair
from qvedit.guidance.guide import Guide, refuse_inference_mode
from qvedit.images import to_pil, to_tensor
from qvedit.io.flow import ClipFlow
from qvedit.io.source import FrameSource
from qvedit.lab import LabStats
from qvedit.models.diffusers_compat import execution_device, record_velocity
from qvedit.models.family import family_of
from qvedit.models.parallel import Team
from qvedit.outputs import ClipOutputs, keeps_saved_frames
from qvedit.plan import ClipPlan
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.start import StartSettings
from qvedit.start.noise import frame_seed  # noqa: F401 (qvedit.editor.frame_seed: a frame's generator's seed)
from qvedit.start.starts import FrameStarts

log = logging.getLogger(__name__)


def checked_frame(image: torch.Tensor, frame_index: int, dtype: Optional[str] = None,
                  guided: bool = True) -> Image.Image:
    """(3, H, W) in [0, 1] -> 8-bit RGB; NaN fails instead of writing black, with the hints that fit the run
    (``dtype``: the run's, None when unknown; ``guided``: whether guidance moved the latents)."""
    if not torch.isfinite(image).all():
        hints = (["dtype=fp32 or bf16 instead of fp16"] if dtype in (None, "fp16") else []) + \
            (["a lower ttlg.lr or lower loss scales"] if guided else [])
        hint = f"try {', or '.join(hints)}" if hints else \
            "neither fp16 nor guidance is on: try another num_inference_steps or model.scheduler"
        raise QveditError(f"frame {frame_index}: the pipeline produced NaN/inf values (nothing written for this "
                          f"frame); {hint}")
    return to_pil(image)


@dataclass
class MadeFrame:
    """One frame as ``FrameMaker.make`` made it, with what its metrics row is measured against."""

    frame: Image.Image  # 8-bit RGB at the clip's size, its colours corrected (anchor.color)
    edge: Image.Image  # its edge map at the clip's size
    pair: Optional[FlowPair]  # the source flow from this frame back to the frame before it (metrics, guidance)
    color_target: Optional[LabStats]  # its target colour statistics (anchor.color, color_drift)
    started: float  # time.perf_counter() when the frame was begun
    guided_steps: int


class FrameMaker:
    """Makes any one frame of a clip from the images it is conditioned on: one pipeline call with the frame's seed,
    edge map and guidance, the result resized to the clip's size and its colours corrected.

    A frame depends only on its index and the images it is given (the frame before it, the frame it follows), never
    on the frames made before in this process, so the rolling loop (``edit_clip``) and a segment schedule on many
    workers (``qvedit.schedule``) make the same frame from the same images.
    """

    def __init__(self, pipe, source: FrameSource, settings: RunSettings, ttlg: TTLGSettings, plan: ClipPlan,
                 first: Image.Image, team: Optional[Team] = None, flow: Optional[ClipFlow] = None,
                 anchor: Optional[AnchorSettings] = None, debug_dir: Optional[Path] = None, wants_color: bool = False,
                 start: Optional[StartSettings] = None):
        """first: frame 0 (8-bit RGB): the Gram reference and the colour target. ``wants_color``: the colour targets
        are needed for the metrics (``color_drift``) even without ``anchor.color`` or ``ttlg.color_scale``.
        ``start``: how each frame starts (``qvedit.start``); None = from its own noise, every step."""
        self.pipe, self.source, self.settings, self.ttlg, self.plan = pipe, source, settings, ttlg, plan
        self.team, self.flow, self.anchor = team or Team(), flow, anchor or AnchorSettings()
        self.guide = Guide(ttlg, pipe, to_tensor(first), debug_dir) if ttlg.enabled and self.team.is_main else None
        wants_color = wants_color or self.anchor.corrects_color or ttlg.color_scale > 0
        self.color = ColorAnchor(self.anchor, first, source) if wants_color else None
        self.device = execution_device(pipe)
        problem = plan.family.start_problem(start)  # said before loading by job.py; here for edit_clip's callers
        if problem:
            raise QveditError(problem)
        self.starts = FrameStarts(start or StartSettings(), pipe, settings.seed, settings.num_inference_steps,
                                  plan.generation_size, flow, self.team, plan.family)

    def make(self, index: int, images: Callable[[Image.Image], list], prompt: str, previous: Image.Image,
             temporal: bool = True) -> MadeFrame:
        """Frame ``index`` (>= 1).

        Args:
            index: the frame; its seed is (seed, index), its edge map edge frame ``index - 1``.
            images: the pipeline's ``image`` list given the frame's edge map ([edge, the frame it follows, ...]).
            prompt: the prompt of the call (``anchor.prompt`` for three images).
            previous: frame ``index - 1``, the temporal guidance's target (moved along the flow with
                ``ttlg.temporal_mode=flow``).
            temporal: False leaves the temporal guidance term out (a keyframe, whose frame before is not made yet).
        """
        width, height = self.plan.init_size
        gen_width, gen_height = self.plan.generation_size
        started = time.perf_counter()
        reset_peak_memory(self.device)
        edge = self.source.edge_frame(index - 1, (width, height))
        pair = self.flow.pair(index, edge) if self.flow is not None and self.team.is_main else None
        generator = torch.Generator(device=self.device).manual_seed(frame_seed(self.settings.seed, index))
        begin = self.starts.frame(index, previous, pair)
        color_target = self.color.target(index) if self.color is not None else None
        guide, family = self.guide, self.plan.family
        with frame_memory(index, (gen_width, gen_height), self.pipe, self.device), \
                family.conditions(self.plan.condition_area), record_velocity(self.pipe.scheduler) as velocity:
            callback = None
            if guide is not None:
                guide.frame_done(to_tensor(previous))
                callback = guide.callback(index, image_to_edge_target(edge), gen_height, gen_width,
                                          begin.steps, velocity, pair, color_target, temporal)
            result = self.pipe(
                image=images(edge),
                prompt=prompt,
                num_inference_steps=self.settings.num_inference_steps,
                height=gen_height,
                width=gen_width,
                generator=generator,
                output_type="pt",
                callback_on_step_end=self.team.step_callback(callback),
                # the family's own arguments, then the start's (latents=; a part-way start's sigmas= is the tail
                # of the family's own, model.sample_sigmas included)
                **{**family.call_arguments(self.plan.condition_area, self.settings.true_cfg_scale,
                                           self.settings.negative_prompt), **begin.kwargs},
            )
        if guide is not None:
            guide.check_finite(index)
        frame = checked_frame(family.rgb(result.images[0]), index, self.settings.dtype, guide is not None)
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        frame = self.team.broadcast(frame)
        if self.anchor.corrects_color:
            frame = self.color.correct(frame, index)
        return MadeFrame(frame, edge, pair, color_target, started, guide.guided_steps if guide else 0)


@keeps_saved_frames  # frames still being written when an error or a stop comes are kept
def edit_clip(pipe, source: FrameSource, outputs: ClipOutputs, settings: RunSettings,
              ttlg: Optional[TTLGSettings] = None, team: Optional[Team] = None,
              flow: Optional[ClipFlow] = None, anchor: Optional[AnchorSettings] = None,
              plan: Optional[ClipPlan] = None, start: Optional[StartSettings] = None) -> list[Path]:
    """Write the edited clip: frame 0 copied, frames 1..T-1 generated in order.

    Frames already in ``outputs``' folder (a resumed run) are kept and the loop goes on from the
    first missing one, with the last finished frame as the previous frame. Each frame's metrics row
    is written as soon as the frame is.

    Args:
        pipe: the loaded pipeline (``qvedit.models.loading.load_pipeline``) of any family (``qvedit.models.family``).
        source: the clip: frame 0 and the T-1 edge frames.
        outputs: where the frames and their metrics rows go (``ClipOutputs``).
        settings: the top-level keys (prompt, steps, CFG, seed, sizes, ``max_frames``).
        ttlg: the guidance settings; None = guidance off.
        team: the torchrun team; every rank calls this with the same inputs, and rank 0's resume point,
            guidance steps and frames are the ones every rank uses. None = one process.
        flow: the source frames' optical flow (rank 0 only), for the warp-error metric and
            ``ttlg.temporal_mode=flow``, which needs it.
        anchor: the drift defences (``qvedit.anchor``): frame 0 as a third image, keyframes made from
            frame 0, and each frame's colours moved toward frame 0's (source-adjusted) statistics before it
            is written and followed; the same target feeds ``color_drift`` and ``ttlg.color_scale``.
        plan: the clip's frame count and sizes (``ClipPlan.of(settings, source)``, computed here when None).
        start: how each frame starts (``qvedit.start``): which noise, and from how far down the schedule; None =
            each frame from its own noise, every step. Its warped noise and part-way starts follow ``flow``.

    Returns:
        The paths of the clip's frames 0..T-1.
    """
    team = team or Team()
    ttlg = ttlg or TTLGSettings()
    anchor = anchor or AnchorSettings()
    if ttlg.enabled:
        refuse_inference_mode()
    if ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0 and team.is_main and flow is None:
        raise QveditError("ttlg.temporal_mode=flow has no optical flow to use: give the clip's flow (flow=dis needs "
                          "opencv-python-headless) or set ttlg.temporal_mode=plain")
    plan = plan or ClipPlan.of(settings, source, family_of(pipe))
    total = plan.total
    init = source.init_image()
    outputs.hops = anchor.hops
    done = outputs.resume_point(init, total)
    previous = outputs.previous_frame(done, init)
    done, previous = team.broadcast((done, previous))
    maker = FrameMaker(pipe, source, settings, ttlg, plan, init, team=team, flow=flow, anchor=anchor,
                       debug_dir=outputs.debug_dir, wants_color=outputs.metrics.quality, start=start)
    written = outputs.start(init, done)
    if done:
        log.info("resuming at frame %d: frames 0..%d are already in %s", done, done - 1, outputs.folder)
    # Progress bars on a terminal; where stderr is a file (a batch job's log) a line per frame instead,
    # since bars that redraw leave escape codes there.
    bars = team.is_main and sys.stderr.isatty()
    pipe.set_progress_bar_config(disable=not bars, leave=False, desc="denoising")
    prompt = anchor.prompt_for(settings.prompt)
    for index in tqdm(range(max(done, 1), total), desc="frames", unit="frame", initial=max(done, 1), total=total,
                      disable=not bars):
        stopping.check()  # a stop whose exception was lost (qvedit.stopping.check) ends the run here
        made = maker.make(index, lambda edge: anchor.condition_images(index, edge, previous, init), prompt, previous)
        seconds = time.perf_counter() - made.started
        # written with its metrics row in the background while the next frame is made
        written.append(outputs.save(index, made.frame, made.edge, previous, made.pair, made.color_target,
                                    hops=anchor.hops(index), seconds=round(seconds, 4), guided_steps=made.guided_steps,
                                    peak_mem_mib=round(peak_memory_mib(maker.device), 1)))
        if team.is_main and not bars:
            log.info("frame %d of %d done in %.2f s%s", index, total - 1, seconds,
                     f", {made.guided_steps} guided steps" if maker.guide else "")
        previous = made.frame
    outputs.finish()
    stopping.check()
    return written
