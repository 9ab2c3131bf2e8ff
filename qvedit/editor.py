"""The rolling frame loop (spec §3.2): frame k+1 = pipe(image=[edge_k, frame k]), one at a time."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from qvedit.edges import image_to_edge_target
from qvedit.errors import QveditError
from qvedit.frames import FrameFolders, FrameWriter, pil_to_tensor, read_rgb8
from qvedit.guidance import Guide, TTLGSettings, record_velocity, refuse_inference_mode
from qvedit.metrics import FrameMetrics, MetricsLog, complete_rows, peak_memory_mib
from qvedit.parallel import Team
from qvedit.pipeline import condition_area, vae_area

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """What every frame's pipeline call shares (the top-level config keys)."""

    prompt: str
    negative_prompt: str = " "
    num_inference_steps: int = 50
    true_cfg_scale: float = 4.0
    seed: int = 0
    condition_area: object = 1048576
    max_area: Optional[int] = None


def generation_size(width: int, height: int, max_area: Optional[int] = None) -> tuple[int, int]:
    """(W, H) to generate at: the init size, scaled down to ``max_area`` if given, in multiples of 16."""
    if max_area is not None:
        if max_area < 16 * 16:
            raise QveditError(f"max_area={max_area} is too small: use at least 256 pixels (or null for no cap)")
        scale = min(1.0, math.sqrt(max_area / (width * height)))
        width, height = width * scale, height * scale
    return max(16, round(width / 16) * 16), max(16, round(height / 16) * 16)


def frame_seed(seed: int, frame_index: int) -> int:
    """The seed of one frame's generator, from (run seed, frame index): any frame can be remade alone."""
    return int(np.random.SeedSequence([seed, frame_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def tensor_to_pil(image: torch.Tensor, frame_index: int) -> Image.Image:
    """(3, H, W) in [0, 1] -> 8-bit RGB, rounded as diffusers does; NaN fails instead of writing black."""
    if not torch.isfinite(image).all():
        raise QveditError(
            f"frame {frame_index}: the pipeline produced NaN/inf values (nothing written for this frame); "
            "try dtype=fp32 or bf16 instead of fp16, or a lower ttlg.lr"
        )
    array = (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def output_frame_count(edge_count: int, max_frames: Optional[int]) -> int:
    """T, the number of output frames including frame 0 (spec §3.1, capped by max_frames)."""
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


def edit_clip(pipe, source: FrameFolders, writer: FrameWriter, settings: GenerationSettings,
              ttlg: TTLGSettings, max_frames: Optional[int] = None, metrics_path: Optional[Path] = None,
              metrics: Optional[FrameMetrics] = None, debug_dir: Optional[str] = None,
              team: Optional[Team] = None) -> list[Path]:
    """Write the edited clip: frame 0 copied, frames 1..T-1 generated in order. Returns the paths.

    Frames already in ``writer``'s folder (a resumed run) are kept and the loop goes on from the
    first missing one, with the last finished frame as the previous frame. With ``metrics_path`` a
    row per frame goes to that CSV as soon as the frame is written (timing columns only unless
    ``metrics`` says what else to measure).

    With a ``team`` of several processes (torchrun, context parallelism) every rank calls this with
    the same inputs; rank 0's resume point, guidance steps and frames are the ones every rank uses.
    """
    team = team or Team()
    if ttlg.enabled:
        refuse_inference_mode()
    total = output_frame_count(len(source), max_frames)
    init = source.init_image()
    width, height = init.size
    gen_width, gen_height = generation_size(width, height, settings.max_area)
    area = vae_area(settings.condition_area, gen_width, gen_height)
    done = resume_point(writer, init, total)
    metrics = metrics or FrameMetrics(quality=False)
    if metrics_path and done > 1:  # a frame whose metrics row was lost is made again (same bytes)
        done = min(done, 1 + len(complete_rows(metrics_path, metrics.columns)))
    previous = read_rgb8(writer.path(done - 1)) if done > 1 else init
    done, previous = team.agree((done, previous))
    guide = Guide(ttlg, pipe, pil_to_tensor(init), debug_dir) if ttlg.enabled and team.is_writer else None
    if guide is not None:
        guide.frame_done(pil_to_tensor(previous))
    log_rows = MetricsLog(metrics_path, metrics.columns, keep_frames_before=done) if metrics_path else None
    metrics.start(init)

    written = [writer.write(0, init)] if done == 0 else [writer.path(i) for i in range(done)]
    if done:
        log.info("resuming at frame %d: frames 0..%d are already in %s", done, done - 1, writer.folder)
    device = pipe._execution_device
    for index in tqdm(range(max(done, 1), total), desc="frames", unit="frame", initial=max(done, 1), total=total,
                      disable=not team.is_writer):
        started = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        edge = source.edge_frame(index - 1, (width, height))
        generator = torch.Generator(device=device).manual_seed(frame_seed(settings.seed, index))
        with condition_area(area), record_velocity(pipe.scheduler) as velocity:
            callback = None
            if guide is not None:
                callback = guide.callback(index, image_to_edge_target(edge), gen_height, gen_width,
                                          settings.num_inference_steps, velocity)
            result = pipe(
                image=[edge, previous],
                prompt=settings.prompt,
                negative_prompt=settings.negative_prompt,
                true_cfg_scale=settings.true_cfg_scale,
                num_inference_steps=settings.num_inference_steps,
                height=gen_height,
                width=gen_width,
                generator=generator,
                output_type="pt",
                callback_on_step_end=team.step_callback(callback),
            )
        frame = tensor_to_pil(result.images[0], index)
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        frame = team.agree(frame)
        written.append(writer.write(index, frame))
        seconds = time.perf_counter() - started
        if guide is not None:
            guide.frame_done(pil_to_tensor(frame))
        if log_rows is not None:
            log_rows.append({"frame": index, **metrics.score(frame, edge, previous), "seconds": round(seconds, 4),
                             "guided_steps": guide.guided_steps if guide else 0,
                             "peak_mem_mib": round(peak_memory_mib(device), 1)})
        previous = frame
    return written


def resume_point(writer: FrameWriter, init: Image.Image, total: int) -> int:
    """How many frames of this clip are already finished in ``writer``'s folder (0 for a new run)."""
    done = writer.finished()
    if done and not np.array_equal(np.asarray(read_rgb8(writer.path(0))), np.asarray(init)):
        raise QveditError(f"{writer.folder} holds frames of another clip (its frame 0 is not this init frame): "
                          "write to a new folder (another hydra.run.dir or io.out_frames_dir)")
    return min(done, total)
