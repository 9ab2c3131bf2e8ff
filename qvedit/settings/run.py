"""The top-level keys: what every frame's pipeline call shares, and where and how much a run makes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from qvedit.fields import setting

# "Deform image 2 into the fine shape outlined by image 1": image 1 = edge map, image 2 = previous frame.
DEFAULT_PROMPT = "将图 2 按图 1 所勾勒出的精致形状进行变形，生成一张图像输出"
PIPELINE_CONDITION_AREA = 1024 * 1024  # what diffusers encodes condition images at (checked by diffusers_compat)
DTYPE_NAMES = ("bf16", "fp16", "fp32")  # qvedit.devices.DTYPES maps each to its torch dtype


@dataclass
class GenerationSettings:
    """What every frame's pipeline call shares."""

    prompt: str = setting(DEFAULT_PROMPT, frames=True)
    negative_prompt: str = setting(" ", frames=True)
    num_inference_steps: int = setting(50, frames=True, min=1, max=1000)
    true_cfg_scale: float = setting(4.0, frames=True, min=0)
    seed: int = setting(0, frames=True, min=0, max=2**63 - 1)
    # a pixel count (at most 16 MP), or "output"; at least 32x32 so no side of a condition image rounds to 0
    condition_area: Any = setting(PIPELINE_CONDITION_AREA, frames=True, min=32 * 32, max=4096 * 4096,
                                  choices=("output",))
    max_area: Optional[int] = setting(None, frames=True, min=16 * 16)


@dataclass
class RunSettings(GenerationSettings):
    """The top-level keys: the generation settings, and where and how much a run makes."""

    device: str = setting("cuda")
    dtype: str = setting("bf16", frames=True, choices=DTYPE_NAMES)
    max_frames: Optional[int] = setting(None, min=1)  # may grow when a run is resumed
    debug_dir: Optional[str] = setting(None, path="output")
    compare_unguided: bool = setting(False)  # also make the clip with guidance off, and compare the two

    @classmethod
    def of(cls, cfg: DictConfig) -> "RunSettings":
        """The top-level keys of a composed config as settings."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})
