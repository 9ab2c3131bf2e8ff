"""The rolling frame loop (docs/METHOD.md, section 2): frame k+1 = pipe(image=[edge_k, frame k]), one at a time."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from qvedit.anchor.color import ColorAnchor
from qvedit.anchor.settings import AnchorSettings
from qvedit.config import PIPELINE_CONDITION_AREA, RunSettings
from qvedit.devices import frame_memory, peak_memory_mib, reset_peak_memory
from qvedit.errors import QveditError
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.flow import ClipFlow
from qvedit.guidance.guide import Guide, refuse_inference_mode
from qvedit.guidance.settings import TTLGSettings
from qvedit.images import to_pil, to_tensor
from qvedit.io.source import FrameSource
from qvedit.models.diffusers_compat import condition_area, execution_device, record_velocity
from qvedit.models.parallel import Team
from qvedit.outputs import ClipOutputs

log = logging.getLogger(__name__)


def generation_size(width: int, height: int, max_area: Optional[int] = None) -> tuple[int, int]:
    """(W, H) to generate at: the init size, scaled down to ``max_area`` if given, in multiples of 16."""
    if max_area is not None:
        if max_area < 16 * 16:
            raise QveditError(f"max_area={max_area} is too small: use at least 256 pixels (or null for no cap)")
        scale = min(1.0, math.sqrt(max_area / (width * height)))
        width, height = width * scale, height * scale
    return max(16, round(width / 16) * 16), max(16, round(height / 16) * 16)


def vae_area(condition_area: int | str, width: int, height: int, image_size: Optional[tuple[int, int]] = None) -> int:
    """The area (pixels) condition images are VAE-encoded at: a number, or ``output`` = W*H.

    Never so small that diffusers' rounding to multiples of 32 makes a side 0: the short side of
    a W x H condition image stays >= 32 pixels. The condition images have the init frame's size
    ``image_size``, whose aspect ratio the generation size (multiples of 16) may not keep: where that
    ratio would still round a side to 0, the area grows until it does not.
    """
    floor = 32 * 32 * max(width / height, height / width)
    if condition_area == "output":
        area = max(width * height, math.ceil(floor))
    elif isinstance(condition_area, int) and not isinstance(condition_area, bool) and condition_area >= 32 * 32:
        area = max(condition_area, math.ceil(floor))
    else:
        area = None
    if area is not None:
        return area if image_size is None else no_zero_side(area, image_size[0] / image_size[1])
    raise QveditError(
        f"condition_area={condition_area!r} is not valid: use 'output' (the generation size) or a pixel count "
        f">= 1024 such as {PIPELINE_CONDITION_AREA} (the pipeline's default)"
    )


def no_zero_side(area: int, ratio: float) -> int:
    """The smallest area >= ``area`` at which diffusers' ``calculate_dimensions`` (sides sqrt(area * ratio)
    and sqrt(area / ratio), rounded to multiples of 32) gives no side of 0."""
    area = max(area, math.floor(256 * max(ratio, 1 / ratio)))
    while round(math.sqrt(area * ratio) / 32) == 0 or round(math.sqrt(area / ratio) / 32) == 0:
        area += 1
    return area


def cpu_speed_warnings(device: str, settings: RunSettings, init_size: tuple[int, int], full_model: bool) -> list[str]:
    """What makes a run very slow on the CPU, each with the setting that fixes it (none on a GPU)."""
    if not device.startswith("cpu"):
        return []
    width, height = generation_size(*init_size, settings.max_area)
    area = vae_area(settings.condition_area, width, height, init_size)
    warnings = []
    if full_model:
        warnings.append("the full 20.4 B-parameter model on the CPU takes hours per frame: use a GPU (device=cuda), "
                        "or experiment=tiny_cpu to try the whole path on the tiny model")
    if settings.condition_area != "output" and area >= 4 * width * height:
        warnings.append(
            f"condition_area={settings.condition_area}: each frame encodes its two condition images at {area} pixels, "
            f"{area // (width * height)}x the {width}x{height} frame, which on the CPU takes minutes per frame (tiny "
            "model, 64x64, 4 steps: 78 s instead of 0.16 s); pass condition_area=output (experiment=tiny_cpu does)")
    return warnings


def frame_seed(seed: int, frame_index: int) -> int:
    """The seed of one frame's generator, from (run seed, frame index): any frame can be remade alone."""
    return int(np.random.SeedSequence([seed, frame_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def checked_frame(image: torch.Tensor, frame_index: int) -> Image.Image:
    """(3, H, W) in [0, 1] -> 8-bit RGB; NaN fails instead of writing black."""
    if not torch.isfinite(image).all():
        raise QveditError(
            f"frame {frame_index}: the pipeline produced NaN/inf values (nothing written for this frame); "
            "try dtype=fp32 or bf16 instead of fp16, or a lower ttlg.lr"
        )
    return to_pil(image)


def output_frame_count(edge_count: int, max_frames: Optional[int]) -> int:
    """T, the number of output frames including frame 0 (docs/METHOD.md, section 1; capped by max_frames)."""
    if max_frames is None:
        return edge_count + 1
    if max_frames < 1:
        raise QveditError(f"max_frames={max_frames} must be >= 1 (it counts frame 0)")
    if max_frames > edge_count + 1:
        raise QveditError(
            f"max_frames={max_frames} but the {edge_count} edge frames allow at most {edge_count + 1} output frames: "
            f"lower max_frames or add edge frames"
        )
    return max_frames


def edit_clip(pipe, source: FrameSource, outputs: ClipOutputs, settings: RunSettings,
              ttlg: Optional[TTLGSettings] = None, team: Optional[Team] = None,
              flow: Optional[ClipFlow] = None, anchor: Optional[AnchorSettings] = None) -> list[Path]:
    """Write the edited clip: frame 0 copied, frames 1..T-1 generated in order. Returns the frame paths.

    Frames already in ``outputs``' folder (a resumed run) are kept and the loop goes on from the
    first missing one, with the last finished frame as the previous frame. Each frame's metrics row
    is written as soon as the frame is.

    With a ``team`` of several processes (torchrun) every rank calls this with the same inputs;
    rank 0's resume point, guidance steps and frames are the ones every rank uses.

    ``flow`` (the source frames' optical flow; rank 0 only) feeds the warp-error metric and
    ``ttlg.temporal_mode=flow``, which needs it.

    ``anchor`` (the drift defences, ``qvedit.anchor``): frame 0 as a third image, keyframes made from
    frame 0, and each frame's colours moved toward frame 0's (source-adjusted) statistics before it is
    written and followed; the same target feeds ``color_drift`` and ``ttlg.color_scale``.
    """
    team = team or Team()
    ttlg = ttlg or TTLGSettings()
    anchor = anchor or AnchorSettings()
    if ttlg.enabled:
        refuse_inference_mode()
    if ttlg.temporal_mode == "flow" and ttlg.temporal_scale > 0 and team.is_writer and flow is None:
        raise QveditError("ttlg.temporal_mode=flow has no optical flow to use: give the clip's flow (flow=dis needs "
                          "opencv-python-headless) or set ttlg.temporal_mode=plain")
    total = output_frame_count(len(source), settings.max_frames)
    init = source.init_image()
    width, height = init.size
    gen_width, gen_height = generation_size(width, height, settings.max_area)
    area = vae_area(settings.condition_area, gen_width, gen_height, init.size)
    done = outputs.resume_point(init, total)
    previous = outputs.previous_frame(done, init)
    done, previous = team.agree((done, previous))
    wants_color = anchor.corrects_color or ttlg.color_scale > 0 or outputs.metrics.quality
    color = ColorAnchor(anchor, init, source) if wants_color else None
    guide = Guide(ttlg, pipe, to_tensor(init), outputs.debug_dir) if ttlg.enabled and team.is_writer else None
    if guide is not None:
        guide.frame_done(to_tensor(previous))
    written = outputs.start(init, done)
    if done:
        log.info("resuming at frame %d: frames 0..%d are already in %s", done, done - 1, outputs.folder)
    device = execution_device(pipe)
    # Progress bars on a terminal; where stderr is a file (a batch job's log) a line per frame instead,
    # since bars that redraw leave escape codes there.
    bars = team.is_writer and sys.stderr.isatty()
    pipe.set_progress_bar_config(disable=not bars, leave=False, desc="denoising")
    for index in tqdm(range(max(done, 1), total), desc="frames", unit="frame", initial=max(done, 1), total=total,
                      disable=not bars):
        started = time.perf_counter()
        reset_peak_memory(device)
        edge = source.edge_frame(index - 1, (width, height))
        pair = flow.pair(index, edge) if flow is not None and team.is_writer else None
        generator = torch.Generator(device=device).manual_seed(frame_seed(settings.seed, index))
        color_target = color.target(index) if color is not None else None
        with frame_memory(index, (gen_width, gen_height), pipe), condition_area(area), \
                record_velocity(pipe.scheduler) as velocity:
            callback = None
            if guide is not None:
                callback = guide.callback(index, image_to_edge_target(edge), gen_height, gen_width,
                                          settings.num_inference_steps, velocity, pair, color_target)
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
            )
        frame = checked_frame(result.images[0], index)
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        frame = team.agree(frame)
        if anchor.corrects_color:
            frame = color.correct(frame, index)
        written.append(outputs.write_frame(index, frame))
        seconds = time.perf_counter() - started
        if guide is not None:
            guide.frame_done(to_tensor(frame))
        outputs.record(index, frame, edge, previous, pair, color_target, seconds=round(seconds, 4),
                       guided_steps=guide.guided_steps if guide else 0,
                       peak_mem_mib=round(peak_memory_mib(device), 1))
        if team.is_writer and not bars:
            log.info("frame %d of %d done in %.2f s%s", index, total - 1, seconds,
                     f", {guide.guided_steps} guided steps" if guide else "")
        previous = frame
    return written
