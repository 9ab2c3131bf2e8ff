"""The rolling frame loop (docs/METHOD.md, section 2): frame k+1 = pipe(image=[edge_k, frame k]), one at a time."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from tqdm.auto import tqdm

from qvedit import stopping
from qvedit.anchor.color import ColorAnchor
from qvedit.devices import frame_memory, peak_memory_mib, reset_peak_memory
from qvedit.errors import QveditError
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.guide import Guide, refuse_inference_mode
from qvedit.images import to_pil, to_tensor
from qvedit.io.flow import ClipFlow
from qvedit.io.source import FrameSource
from qvedit.models.diffusers_compat import condition_area, execution_device, record_velocity
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
        pipe: the loaded ``QwenImageEditPlusPipeline`` (``qvedit.models.loading.load_pipeline``).
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
    plan = plan or ClipPlan.of(settings, source)
    total, (width, height), (gen_width, gen_height) = plan.total, plan.init_size, plan.generation_size
    init = source.init_image()
    done = outputs.resume_point(init, total)
    previous = outputs.previous_frame(done, init)
    done, previous = team.broadcast((done, previous))
    wants_color = anchor.corrects_color or ttlg.color_scale > 0 or outputs.metrics.quality
    color = ColorAnchor(anchor, init, source) if wants_color else None
    guide = Guide(ttlg, pipe, to_tensor(init), outputs.debug_dir) if ttlg.enabled and team.is_main else None
    if guide is not None:
        guide.frame_done(to_tensor(previous))
    starts = FrameStarts(start or StartSettings(), pipe, settings.seed, settings.num_inference_steps,
                         (gen_width, gen_height), flow, team)
    written = outputs.start(init, done)
    if done:
        log.info("resuming at frame %d: frames 0..%d are already in %s", done, done - 1, outputs.folder)
    device = execution_device(pipe)
    # Progress bars on a terminal; where stderr is a file (a batch job's log) a line per frame instead,
    # since bars that redraw leave escape codes there.
    bars = team.is_main and sys.stderr.isatty()
    pipe.set_progress_bar_config(disable=not bars, leave=False, desc="denoising")
    for index in tqdm(range(max(done, 1), total), desc="frames", unit="frame", initial=max(done, 1), total=total,
                      disable=not bars):
        stopping.check()  # a stop whose exception was lost (qvedit.stopping.check) ends the run here
        started = time.perf_counter()
        reset_peak_memory(device)
        edge = source.edge_frame(index - 1, (width, height))
        pair = flow.pair(index, edge) if flow is not None and team.is_main else None
        generator = torch.Generator(device=device).manual_seed(frame_seed(settings.seed, index))
        begin = starts.frame(index, previous, pair)
        color_target = color.target(index) if color is not None else None
        with frame_memory(index, (gen_width, gen_height), pipe, device), condition_area(plan.condition_area), \
                record_velocity(pipe.scheduler) as velocity:
            callback = None
            if guide is not None:
                callback = guide.callback(index, image_to_edge_target(edge), gen_height, gen_width,
                                          begin.steps, velocity, pair, color_target)
            result = pipe(
                image=anchor.condition_images(index, edge, previous, init),
                prompt=anchor.prompt_for(settings.prompt),
                negative_prompt=settings.negative_prompt,
                true_cfg_scale=settings.true_cfg_scale,
                num_inference_steps=settings.num_inference_steps,
                height=gen_height,
                width=gen_width,
                generator=generator,
                output_type="pt",
                callback_on_step_end=team.step_callback(callback),
                **begin.kwargs,
            )
        if guide is not None:
            guide.check_finite(index)
        frame = checked_frame(result.images[0], index, settings.dtype, guide is not None)
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        frame = team.broadcast(frame)
        if anchor.corrects_color:
            frame = color.correct(frame, index)
        seconds = time.perf_counter() - started
        if guide is not None:
            guide.frame_done(to_tensor(frame))
        # written with its metrics row in the background while the next frame is made
        written.append(outputs.save(index, frame, edge, previous, pair, color_target, seconds=round(seconds, 4),
                                    guided_steps=guide.guided_steps if guide else 0,
                                    peak_mem_mib=round(peak_memory_mib(device), 1)))
        if team.is_main and not bars:
            log.info("frame %d of %d done in %.2f s%s", index, total - 1, seconds,
                     f", {guide.guided_steps} guided steps" if guide else "")
        previous = frame
    outputs.finish()
    stopping.check()
    return written
