"""The rolling frame loop (docs/METHOD.md, section 2): frame k+1 = pipe(image=[edge_k, frame k]), one at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image
from tqdm.auto import tqdm

from qvedit.anchor.color import ColorAnchor
from qvedit.core import stopping
from qvedit.core.color_stats import LabStats
from qvedit.core.errors import QveditError
from qvedit.core.images import to_tensor
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.guide import Guide, refuse_inference_mode
from qvedit.guidance.optical_flow import FlowPair
from qvedit.io.clip_flow import ClipFlow
from qvedit.io.source import FrameSource
from qvedit.models.devices import peak_memory_mib, reset_peak_memory
from qvedit.models.diffusers_compat import VelocityRecorder
from qvedit.models.family import family_of
from qvedit.models.parallel import Team
from qvedit.run.frame_outputs import ClipOutputs, MadeFrame, keeps_saved_frames
from qvedit.run.frame_plan import ClipPlan
from qvedit.run.pipeline_call import PipelineCall, show_denoising_bars, shows_bars
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.start import StartSettings
from qvedit.start.noise import frame_seed
from qvedit.start.starts import FrameStarts

log = logging.getLogger(__name__)


@dataclass
class FrameGuidance:
    """Frame ``index``'s test-time guidance as its pipeline call's step guidance (``pipeline_call.StepGuidance``):
    the ``Guide``'s step callback toward the frame's targets, and its NaN check after the call."""

    guide: Guide
    index: int
    previous: Image.Image  # the frame before: the temporal term's target
    edge: Image.Image  # the frame's edge map: the edge term's target
    generation_size: tuple[int, int]  # (W, H)
    steps: int  # the steps the call runs (a part-way start runs fewer)
    pair: Optional[FlowPair]
    color_target: Optional[LabStats]
    temporal: bool

    def callback(self, velocity: VelocityRecorder) -> Callable:
        gen_width, gen_height = self.generation_size
        self.guide.frame_done(to_tensor(self.previous))
        return self.guide.callback(self.index, image_to_edge_target(self.edge), gen_height, gen_width, self.steps,
                                   velocity, self.pair, self.color_target, self.temporal)

    def check(self) -> None:
        self.guide.check_finite(self.index)


class FrameMaker:
    """Makes any one frame of a clip from the images it is conditioned on: one pipeline call with the frame's seed,
    edge map and guidance, the result resized to the clip's size and its colours corrected.

    A frame depends only on its index and the images it is given (the frame before it, the frame it follows), never
    on the frames made before in this process, so the rolling loop (``edit_clip``) and a segment schedule on many
    workers (``qvedit.run.schedule``) make the same frame from the same images.
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
        self.call = PipelineCall(pipe, plan, self.team)
        self.device = self.call.device
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
        settings = self.settings
        started = time.perf_counter()
        reset_peak_memory(self.device)
        # 1. what it is made from: its edge map, the source's flow back to the frame before, where it starts (which
        #    noise, from how far down the schedule: qvedit.start), its colour target
        edge = self.source.edge_frame(index - 1, self.plan.init_size)
        pair = self.flow.pair(index, edge) if self.flow is not None and self.team.is_main else None
        begin = self.starts.frame(index, previous, pair)
        color_target = self.color.target(index) if self.color is not None else None
        # 2. its guidance, as the call's step callback (rank 0 only)
        guidance = None if self.guide is None else FrameGuidance(
            self.guide, index, previous, edge, self.plan.generation_size, begin.steps, pair, color_target, temporal)
        # 3. the pipeline call: 8-bit RGB at the clip's size, checked for NaN, rank 0's on every rank
        frame = self.call(index, images(edge), prompt, settings.num_inference_steps,
                          frame_seed(settings.seed, index), self.plan.init_size, settings.true_cfg_scale,
                          settings.negative_prompt, start=begin.kwargs, guidance=guidance,
                          hints=(settings.dtype, guidance is not None))
        # 4. its colours moved toward frame 0's (anchor.color)
        if self.anchor.corrects_color:
            frame = self.color.correct(frame, index)
        return MadeFrame(frame, edge, pair, color_target, started, self.guide.guided_steps if self.guide else 0)


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
    team, ttlg, anchor = team or Team(), ttlg or TTLGSettings(), anchor or AnchorSettings()
    # 1. what can be refused before a frame is made
    if ttlg.enabled:
        refuse_inference_mode()
    if ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0 and team.is_main and flow is None:
        raise QveditError("ttlg.temporal_mode=flow has no optical flow to use: give the clip's flow (flow=dis needs "
                          "opencv-python-headless) or set ttlg.temporal_mode=plain")
    # 2. the clip's plan, and where a resumed run goes on: the first frame missing, after the last one finished
    plan = plan or ClipPlan.of(settings, source, family_of(pipe))
    init = source.init_image()
    outputs.hops = anchor.hops
    done = outputs.resume_point(init, plan.total)
    previous = outputs.previous_frame(done, init)
    done, previous = team.broadcast((done, previous))
    first = max(done, 1)
    # 3. the frame maker (guidance, colour anchor, starts), and frame 0 written (unless resumed)
    maker = FrameMaker(pipe, source, settings, ttlg, plan, init, team=team, flow=flow, anchor=anchor,
                       debug_dir=outputs.debug_dir, wants_color=outputs.metrics.quality, start=start)
    written = outputs.start(init, done)
    if done:
        log.info("resuming at frame %d: frames 0..%d are already in %s", done, done - 1, outputs.folder)
    # 4. progress: bars on a terminal, a line per frame in a log
    bars = shows_bars(team)
    show_denoising_bars(pipe, bars)
    frames = tqdm(range(first, plan.total), desc="frames", unit="frame", initial=first, total=plan.total,
                  disable=not bars)
    # 5. frames 1..T-1 in order, each from the one before; written with its metrics row in the background while the
    #    next one is made
    prompt = anchor.prompt_for(settings.prompt)
    for index in frames:
        stopping.check()  # a stop whose exception was lost (qvedit.core.stopping.check) ends the run here
        made = maker.make(index, lambda edge: anchor.condition_images(index, edge, previous, init), prompt, previous)
        seconds = time.perf_counter() - made.started
        written.append(outputs.save(index, made, previous, hops=anchor.hops(index), seconds=round(seconds, 4),
                                    peak_mem_mib=round(peak_memory_mib(maker.device), 1)))
        if team.is_main and not bars:
            log.info("frame %d of %d done in %.2f s%s", index, plan.total - 1, seconds,
                     f", {made.guided_steps} guided steps" if maker.guide else "")
        previous = made.frame
    # 6. every frame on disk with its row
    outputs.finish()
    stopping.check()
    return written
