"""The top-level keys: what every frame's pipeline call shares, and where and how much a run makes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from qvedit.settings.field_tags import setting

# "Deform image 2 into the fine shape outlined by image 1": image 1 = edge map, image 2 = previous frame.
DEFAULT_PROMPT = "将图 2 按图 1 所勾勒出的精致形状进行变形，生成一张图像输出"
PIPELINE_CONDITION_AREA = 1024 * 1024  # what diffusers encodes condition images at (checked by diffusers_compat)
DTYPE_NAMES = ("bf16", "fp16", "fp32")  # qvedit.models.devices.DTYPES maps each to its torch dtype


@dataclass
class GenerationSettings:
    """What every frame's pipeline call shares."""

    prompt: str = setting(DEFAULT_PROMPT, frames=True, flag="--prompt", help=(
        "image 1 = edge map, image 2 = previous frame"))
    negative_prompt: str = setting(" ", frames=True, flag="--negative_prompt", help=(
        "the negative prompt of true CFG's second pass (used when `true_cfg_scale` > 1)"))
    num_inference_steps: int = setting(50, frames=True, min=1, max=1000, flag="--num_inference_steps", help=(
        "denoising steps per frame (`model=qwen_edit_2511`, `qwen_image_21`: 40)"))
    true_cfg_scale: float = setting(4.0, frames=True, min=0, flag="--true_cfg_scale", help=(
        "true CFG: two transformer passes per step when > 1 (`model=qwen_image_21`: 1.0)"))
    seed: int = setting(0, frames=True, min=0, max=2**63 - 1, flag="--seed", help="frame i is seeded from (seed, i)")
    # a pixel count (at most 16 MP), or "output"; at least 32x32 so no side of a condition image rounds to 0
    condition_area: Any = setting(PIPELINE_CONDITION_AREA, frames=True, min=32 * 32, max=4096 * 4096,
                                  choices=("output",), help=(
        "pixels the condition images are VAE-encoded at; `output` = the generation size"))
    max_area: Optional[int] = setting(None, frames=True, min=16 * 16, help="cap on the generation area in pixels")


@dataclass
class RunSettings(GenerationSettings):
    """The top-level keys: the generation settings, and where and how much a run makes."""

    device: str = setting("cuda", flag="--device", help="where the pipeline runs: `cuda`, `cuda:N` or `cpu`")
    dtype: str = setting("bf16", frames=True, choices=DTYPE_NAMES, flag="--dtype", help=(
        "the pipeline's weights and computation: `bf16`, `fp16` or `fp32`"))
    max_frames: Optional[int] = setting(None, min=1, flag="--max_frames", help=(
        "total output frames including frame 0 (>= 1, at most edge frames + 1)"))  # may grow when a run is resumed
    debug_dir: Optional[str] = setting(None, path="output", flag="--save_debug_dir", help=(
        "per frame and guided step: the decoded x0 and its soft edges as PNGs"))
    compare_unguided: bool = setting(False, help=(
        "with guidance on: also make the clip with guidance off (`<run dir>/unguided/`) and print how the "
        "losses compare (`experiment=demo` sets it)"))

    @classmethod
    def of(cls, cfg: DictConfig) -> "RunSettings":
        """The top-level keys of a composed config as settings."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})
