"""A clip's plan: how many frames, at which sizes the pipeline generates and encodes them, computed once.

``ClipPlan.of(settings, source)`` holds the size arithmetic of a run and checks what the clip's inputs allow
before the model loads: how many frames ``max_frames`` asks of the edge frames, and whether the pipeline
can derive its condition images from the frame's shape. The values of the keys are checked before, against
the schema (``qvedit.run.config_values.check_values``). Sizes the metrics and the Gram loss could not take are
computed at the smallest size VGG16 takes (``qvedit.guidance.losses.at_least``), so they need no check here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from qvedit.core.errors import QveditError
from qvedit.io.source import FrameSource
from qvedit.models.family import FAMILIES, Family
from qvedit.settings.run import RunSettings

# transformers' Qwen2-VL image processor refuses images more elongated than this (smart_resize)
VL_MAX_ASPECT = 200


@dataclass(frozen=True)
class ClipPlan:
    """What a clip's edit makes: every call of the pipeline, frame 0's edit included, uses these sizes."""

    total: int  # T, the output frames including frame 0
    init_size: tuple[int, int]  # (W, H) of frame 0, and of every frame written
    generation_size: tuple[int, int]  # (W, H) the pipeline generates at: multiples of 16 (32), within max_area
    condition_area: int  # pixels the condition images are VAE-encoded at
    family: Family = FAMILIES["qwen_edit_plus"]  # the model family whose pipeline makes the calls, as configured

    @classmethod
    def of(cls, settings: RunSettings, source: FrameSource, family: Optional[Family] = None) -> "ClipPlan":
        """The plan of the clip ``source`` holds, edited with ``settings``.

        Args:
            settings: the top-level keys (``max_frames``, ``max_area``, ``condition_area`` are read).
            source: the clip: its frame 0 and its T-1 edge frames.
            family: the model family (``qvedit.models.family.family_for``); None: Qwen-Image-Edit-Plus.

        Returns:
            The plan. Raises a QveditError for a clip no stage could finish: ``max_frames`` beyond the edge
            frames, or frames too elongated for the pipeline's vision-language encoder.
        """
        return cls.sized(settings, source.init_image().size, len(source), family)

    @classmethod
    def sized(cls, settings: RunSettings, init_size: tuple[int, int], edge_count: int,
              family: Optional[Family] = None) -> "ClipPlan":
        """``of`` for a clip whose frame 0 is ``init_size`` = (W, H) with ``edge_count`` edge frames."""
        family = family or FAMILIES["qwen_edit_plus"]
        width, height = init_size
        total = output_frame_count(edge_count, settings.max_frames)
        generation = generation_size(width, height, settings.max_area, family.size_multiple)
        area = vae_area(settings.condition_area, *generation, init_size)
        (vl_width, vl_height), _ = family.condition_sizes(init_size, area)
        if min(vl_width, vl_height) == 0 or max(vl_width, vl_height) / min(vl_width, vl_height) > VL_MAX_ASPECT:
            raise QveditError(
                f"the frames are {width}x{height}, too elongated for the pipeline's vision-language encoder (its "
                f"condition image would be {vl_width}x{vl_height}, at most {VL_MAX_ASPECT}:1 is taken): crop or pad "
                "the frames to a less elongated shape")
        return cls(total, (width, height), generation, area, family)

    @property
    def condition_image(self) -> tuple[int, int]:
        """(W, H) the VAE encodes a condition image at (one of frame 0's size)."""
        return self.family.condition_sizes(self.init_size, self.condition_area)[1]


def output_frame_count(edge_count: int, max_frames: Optional[int]) -> int:
    """T, the number of output frames including frame 0 (docs/METHOD.md, section 1; capped by max_frames)."""
    if max_frames is None:
        return edge_count + 1
    if max_frames > edge_count + 1:
        raise QveditError(
            f"max_frames={max_frames} but the {edge_count} edge frames allow at most {edge_count + 1} output frames: "
            f"lower max_frames or add edge frames"
        )
    return max_frames


def generation_size(width: int, height: int, max_area: Optional[int] = None, multiple: int = 16) -> tuple[int, int]:
    """(W, H) to generate at: the init size, scaled down to ``max_area`` if given, in multiples of ``multiple`` (the
    family's: 16, Qwen-Image 2.1's 32)."""
    if max_area is not None:
        scale = min(1.0, math.sqrt(max_area / (width * height)))
        width, height = width * scale, height * scale
    return max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple)


def vae_area(condition_area: Union[int, str], width: int, height: int,
             image_size: Optional[tuple[int, int]] = None) -> int:
    """The area (pixels) condition images are VAE-encoded at: a number, or ``output`` = W*H.

    Never so small that diffusers' rounding to multiples of 32 makes a side 0: the short side of
    a W x H condition image stays >= 32 pixels. The condition images have the init frame's size
    ``image_size``, whose aspect ratio the generation size (multiples of 16) may not keep: where that
    ratio would still round a side to 0, the area grows until it does not.
    """
    floor = 32 * 32 * max(width / height, height / width)
    area = max(width * height if condition_area == "output" else condition_area, math.ceil(floor))
    return area if image_size is None else no_zero_side(area, image_size[0] / image_size[1])


def no_zero_side(area: int, ratio: float) -> int:
    """The smallest area >= ``area`` at which diffusers' ``calculate_dimensions`` (sides sqrt(area * ratio)
    and sqrt(area / ratio), rounded to multiples of 32) gives no side of 0."""
    area = max(area, math.floor(256 * max(ratio, 1 / ratio)))
    while round(math.sqrt(area * ratio) / 32) == 0 or round(math.sqrt(area / ratio) / 32) == 0:
        area += 1
    return area


def cpu_speed_warnings(device: str, settings: RunSettings, plan: ClipPlan, full_model: bool) -> list[str]:
    """What makes a run very slow on the CPU, each with the setting that fixes it (none on a GPU)."""
    if not device.startswith("cpu"):
        return []
    width, height = plan.generation_size
    area = plan.condition_area
    warnings = []
    if full_model:
        size = "20.4 B-parameter" if plan.family.name == "qwen_edit_plus" else "7 B-parameter (and 8 B encoder)"
        warnings.append(f"the full {size} model on the CPU takes hours per frame: use a GPU (device=cuda), "
                        "or experiment=tiny_cpu to try the whole path on the tiny model")
    if settings.condition_area != "output" and area >= 4 * width * height:
        warnings.append(
            f"condition_area={settings.condition_area}: each frame encodes its two condition images at {area} pixels, "
            f"{area // (width * height)}x the {width}x{height} frame, which on the CPU takes minutes per frame (tiny "
            "model, 64x64, 4 steps: 78 s instead of 0.16 s); pass condition_area=output (experiment=tiny_cpu does)")
    return warnings
