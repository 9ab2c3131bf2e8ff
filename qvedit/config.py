"""Structured-config schemas: every YAML file in ``conf/`` is checked against these at compose time.

A misspelt key (``ttlg.edge_scal=1``) or a wrong type (``seed=abc``) fails before anything runs,
with Hydra's message naming the key. Each group's ``_target_`` names the function in the module
that owns it (``conf/ttlg/*.yaml`` -> ``qvedit.guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from qvedit.acceptance import Thresholds
from qvedit.guidance import TTLGSettings
from qvedit.parallel import ParallelSettings
from qvedit.perf import PerfSettings

DEFAULT_PROMPT = "将图 2 按图 1 所勾勒出的精致形状进行变形，生成一张图像输出"


@dataclass
class ModelConfig:
    """``model/``: how the pipeline is obtained (``qvedit.pipeline``)."""

    _target_: str = "qvedit.pipeline.load_pipeline"
    model_id: str = "Qwen/Qwen-Image-Edit-2509"


@dataclass
class FramesIOConfig:
    """``io=frames`` / ``io=demo``: frame folders in, frame folder out (``qvedit.frames``)."""

    _target_: str = "qvedit.frames.FrameFolders"
    init_frame: Optional[str] = None
    edge_frames_dir: Optional[str] = None
    out_frames_dir: Optional[str] = None
    resize: str = "area"


@dataclass
class VideoIOConfig:
    """``io=video``: video files in, mp4 + frame folder out (``qvedit.video``)."""

    _target_: str = "qvedit.video.VideoClip"
    rgb_video: Optional[str] = None
    edge_video: Optional[str] = None
    out_video: Optional[str] = None
    out_frames_dir: Optional[str] = None
    resize: str = "area"
    edge_op: str = "sobel"
    edges_dir: Optional[str] = None
    keep_frames: bool = True


@dataclass
class TTLGConfig(TTLGSettings):
    """``ttlg/``: test-time loss guidance settings; the fields are ``TTLGSettings``'s."""

    _target_: str = "qvedit.guidance.TTLGSettings"


@dataclass
class MetricsConfig:
    """``metrics/``: what is measured per frame and written to ``metrics.csv`` (``qvedit.metrics``)."""

    _target_: str = "qvedit.metrics.FrameMetrics"
    quality: bool = True
    path: Optional[str] = None
    size: int = 256
    gram_size: int = 256
    vgg_weights: str = "imagenet"


@dataclass
class AcceptanceConfig(Thresholds):
    """``acceptance/``: the spec §6.3 thresholds the sweep report judges by (``qvedit.acceptance``)."""

    _target_: str = "qvedit.acceptance.Thresholds"


@dataclass
class PerfConfig(PerfSettings):
    """``perf/``: speed and memory settings (``qvedit.perf``)."""

    _target_: str = "qvedit.perf.PerfSettings"


@dataclass
class ParallelConfig(ParallelSettings):
    """``parallel/``: one frame on several GPUs under torchrun (``qvedit.parallel``)."""

    _target_: str = "qvedit.parallel.ParallelSettings"


@dataclass
class QveditConfig:
    """The whole run. Top-level keys mirror the specification's command-line flags."""

    model: ModelConfig = field(default_factory=ModelConfig)
    io: Any = MISSING  # one of the io/ schemas below, chosen by the io/*.yaml file
    ttlg: TTLGConfig = field(default_factory=TTLGConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = " "
    num_inference_steps: int = 50
    true_cfg_scale: float = 4.0
    seed: int = 0
    device: str = "cuda"
    dtype: str = "bf16"
    max_frames: Optional[int] = None
    condition_area: Any = 1048576
    max_area: Optional[int] = None
    debug_dir: Optional[str] = None


def register_schemas() -> None:
    """Make the schemas available to the defaults lists of ``conf/config.yaml`` and ``conf/io/*.yaml``."""
    store = ConfigStore.instance()
    store.store(name="qvedit_schema", node=QveditConfig)
    store.store(group="io", name="schema_frames", node=FramesIOConfig)
    store.store(group="io", name="schema_video", node=VideoIOConfig)
