"""What a clip must be for every stage to take it, checked before the model loads.

The values of the keys are checked against the schema (``qvedit.config.check_values``); this module
checks what depends on the inputs as well: how many frames ``max_frames`` asks of the edge frames,
and whether the pipeline can derive its condition images from the frame's shape. Sizes the metrics
and the Gram loss could not take are computed at the smallest size VGG16 takes
(``qvedit.guidance.losses.at_least``), so they need no check here.
"""

from __future__ import annotations

from qvedit.config import RunSettings
from qvedit.editor import generation_size, output_frame_count, vae_area
from qvedit.errors import QveditError
from qvedit.io.source import FrameSource
from qvedit.models.diffusers_compat import condition_sizes

# transformers' Qwen2-VL image processor refuses images more elongated than this (smart_resize)
VL_MAX_ASPECT = 200


def check_clip(settings: RunSettings, source: FrameSource) -> int:
    """T, the number of output frames; raises a QveditError for a clip no stage could finish."""
    total = output_frame_count(len(source), settings.max_frames)
    width, height = source.init_image().size
    area = vae_area(settings.condition_area, *generation_size(width, height, settings.max_area), (width, height))
    (vl_width, vl_height), _ = condition_sizes((width, height), area)
    if min(vl_width, vl_height) == 0 or max(vl_width, vl_height) / min(vl_width, vl_height) > VL_MAX_ASPECT:
        raise QveditError(
            f"the frames are {width}x{height}, too elongated for the pipeline's vision-language encoder (its condition "
            f"image would be {vl_width}x{vl_height}, at most {VL_MAX_ASPECT}:1 is taken): crop or pad the frames "
            "to a less elongated shape")
    return total
