"""``model/``, ``perf/`` and ``parallel/``: which pipeline a run uses, how fast, on how many GPUs.

Plain settings (keys: docs/configuration.md); the work is done in ``qvedit.models``: ``loading``
(``load_pipeline``), ``lora`` (``check_model``), ``perf`` (``check_perf``, ``apply_perf``) and ``parallel``
(``start_team``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from qvedit.core.files import cache_dir
from qvedit.settings.field_tags import setting

TINY_MODEL_FOLDER = "tiny-qwen-image-edit-2509"  # in the cache folder; conf/model/tiny.yaml names it too
TINY_21_FOLDER = "tiny-qwen-image-2.1"  # conf/model/tiny_21.yaml names it too
TOY_WEIGHTS = Path(__file__).resolve().parent.parent / "toy" / "weights"  # conf/model/toy.yaml names it too


@dataclass(frozen=True)
class Release:
    """One model of the Qwen edit family as qvedit knows it: which diffusers pipeline runs it (its family, the code
    of ``qvedit.models.family``) and the few-step LoRAs distilled from it (``experiment=lightning``)."""

    name: str  # Qwen-Image-Edit-2509
    family: str  # qwen_edit_plus | qwen_image_21 (qvedit.models.family.FAMILIES)
    preset: str  # the model= option of its real weights
    lightning_repo: str = ""  # the hub repo of its Lightning LoRAs; "" = none published
    lightning_files: tuple = ()  # ((steps, file in the repo), ...)

    def lightning_file(self, steps: int) -> str:
        return dict(self.lightning_files).get(int(steps), "")


# The Lightning files, as ModelTC/Qwen-Image-Lightning's README lists them (snapshot of 2026-01-01): 2509's 4 and 8
# steps in lightx2v/Qwen-Image-Lightning; 2511's 4 steps in lightx2v/Qwen-Image-Edit-2511-Lightning. 2511's 8-step
# file is not in that README; its name is the one public code downloads from the same repo (docs/models.md, "Few-step
# Lightning and LoRAs": not verified against the hub).
RELEASES = {
    "2509": Release("Qwen-Image-Edit-2509", "qwen_edit_plus", "qwen_edit_2509", "lightx2v/Qwen-Image-Lightning",
                    ((8, "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"),
                     (4, "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors"))),
    "2511": Release("Qwen-Image-Edit-2511", "qwen_edit_plus", "qwen_edit_2511",
                    "lightx2v/Qwen-Image-Edit-2511-Lightning",
                    ((8, "Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors"),
                     (4, "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors"))),
    "2.1": Release("Qwen-Image 2.1", "qwen_image_21", "qwen_image_21"),
}
# model keys only one family takes: {key: the family}
FAMILY_KEYS = {"kv_cache": "qwen_image_21", "sample_sigmas": "qwen_image_21"}


@dataclass
class LoraSpec:
    """One entry of ``model.loras`` (docs/models.md, "Few-step Lightning and LoRAs")."""

    path: str = ""  # a .safetensors file, a folder holding one, or a hub id (owner/name)
    weight_name: Optional[str] = None  # the file inside the folder or hub repo (null: pytorch_lora_weights.safetensors)
    scale: float = 1.0


def plain(value: Any) -> Any:
    """OmegaConf's containers (as Hydra hands them to a settings class) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


@dataclass
class ModelSettings:
    """``model=qwen_edit_2509`` (``qwen_edit_2511``, ``qwen_image_21``): real weights from a hub id or a local folder
    in the diffusers layout, of the model ``release`` names."""

    model_id: str = setting("Qwen/Qwen-Image-Edit-2509", frames=True, path="input", flag="--model_id", help=(
        "hub id or local folder (`model=tiny`: its cache folder)"))
    # LoRAs loaded into the transformer; paths inside, so left out of sweep folder names like model_id
    loras: List[LoraSpec] = setting(frames=True, path="input", default_factory=list, help=(
        "LoRAs loaded into the transformer, each `{path, weight_name, scale}` ([Lightning and "
        "LoRAs](models.md#few-step-lightning-and-loras); `experiment=lightning` sets one)"))
    scheduler: Dict[str, Any] = setting(frames=True, default_factory=dict, help=(
        "`FlowMatchEulerDiscreteScheduler` values replacing the model's own scheduler config; `{}` = the "
        "model's own (`experiment=lightning` sets all of them)"))
    release: str = setting("2509", frames=True, choices=tuple(RELEASES), help=(
        "which model the weights are: `2509`, `2511` (Qwen-Image-Edit, `QwenImageEditPlusPipeline`) or `2.1` "
        "(Qwen-Image 2.1, `QwenImage21Pipeline`); picks the pipeline class, the family's calls and "
        "`experiment=lightning`'s LoRA; each `model=` preset sets it ([Which model](models.md))"))
    kv_cache: Optional[bool] = setting(None, frames=True, help=(
        "Qwen-Image 2.1 only: its text and condition images' keys and values computed once, at the first "
        "step, and reused (diffusers' `use_kv_cache`); null = on; `false` recomputes them every step (slower;"
        " the frames differ in the last bits)"))
    sample_sigmas: Optional[List[float]] = setting(None, frames=True, help=(
        "Qwen-Image 2.1 only: a fixed sampling grid (falling sigmas from 1, the terminal 0 left out), passed "
        "as the call's `sigmas`; its length must be `num_inference_steps` (and "
        "`first_frame.num_inference_steps`); null = the pipeline's own (its `sample_sigmas`, else evenly "
        "spaced)"))

    kind: ClassVar[str] = "pretrained"  # how qvedit.models.loading.load_pipeline obtains the pipeline

    def __post_init__(self):
        self.loras = [entry if isinstance(entry, LoraSpec) else LoraSpec(**plain(entry)) for entry in self.loras]
        self.scheduler = plain(self.scheduler)
        self.release = str(self.release)
        if self.sample_sigmas is not None:
            self.sample_sigmas = [float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else s
                                  for s in plain(self.sample_sigmas)]

    @property
    def real_weights(self) -> bool:
        """Whether the pipeline is the real model (a hub id or a folder), not the tiny or random one."""
        return self.kind == "pretrained"

    @property
    def about(self) -> Release:
        return RELEASES[str(self.release)]

    @property
    def family(self) -> str:
        """The family whose pipeline runs these weights (``qvedit.models.family``)."""
        return self.about.family

    def entry_problem(self) -> Optional[str]:
        """Why an entry of ``model.loras`` is not one a LoRA can be loaded from (one line), or None."""
        for i, lora in enumerate(self.loras):
            if not isinstance(lora.path, str) or not lora.path.strip():
                if not self.about.lightning_repo and not lora.weight_name:  # experiment=lightning's entry, unfilled
                    return (f"model.loras[{i}] is empty: experiment=lightning loads the Lightning LoRA distilled from "
                            f"the model, and none is published for {self.about.name} (model.release={self.release}): "
                            "drop experiment=lightning, or give a LoRA with model.loras=[{path:...}]")
                return (f"model.loras[{i}].path is empty: give a .safetensors file, a folder holding one, or a hub id "
                        "such as lightx2v/Qwen-Image-Lightning")
            scale = lora.scale
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                return f"model.loras[{i}].scale={lora.scale!r} is not a finite number"
        return None

    def family_problem(self, steps: Dict[str, int]) -> Optional[str]:
        """Why these keys do not fit the family of ``release`` (one line naming it), or None: a key only the other
        family takes, or a sampling grid that is not one. ``steps``: {key: value} of every ``num_inference_steps``
        the run's calls take, each of which must be the grid's length."""
        for key, family in FAMILY_KEYS.items():
            if getattr(self, key) is not None and family != self.family:
                takes = " and ".join(RELEASES[r].name for r, about in RELEASES.items() if about.family == family)
                mine = ", ".join(about.name for about in RELEASES.values() if about.family == self.family)
                return (f"model.{key} is a key of {takes} ({family}); model.release={self.release} is the "
                        f"{self.family} family ({mine}), which does not take it: drop model.{key}")
        sigmas = self.sample_sigmas
        if sigmas is not None:
            if not sigmas or not all(isinstance(s, (int, float)) and 0 < s <= 1 for s in sigmas) or \
                    any(b >= a for a, b in zip(sigmas, sigmas[1:])):
                return (f"model.sample_sigmas={list(sigmas)} is not a sampling grid: give falling sigmas in (0, 1], "
                        "the first usually 1.0, the terminal 0 left out")
            for key, count in steps.items():
                if len(sigmas) != count:
                    return (f"model.sample_sigmas has {len(sigmas)} values, so each call takes {len(sigmas)} steps, "
                            f"but {key}={count}: set {key}={len(sigmas)}")
        return None


@dataclass
class TinyModel(ModelSettings):
    """``model=tiny`` (``tiny_21``): the offline toy model of ``release``'s family, built into the folder ``model_id``
    on first use."""

    kind: ClassVar[str] = "tiny"

    @classmethod
    def in_cache(cls, release: str = "2509") -> "TinyModel":
        """The tiny model of ``release``'s family in qvedit's cache folder, where ``model=tiny`` (``tiny_21``) keeps
        it."""
        folder = TINY_21_FOLDER if RELEASES[release].family == "qwen_image_21" else TINY_MODEL_FOLDER
        return cls(str(cache_dir() / folder), release=release)


@dataclass
class ToyModel(ModelSettings):
    """``model=toy``: the small edit model trained in this repository (``qvedit/toy/``), committed with its
    weights; ``model_id`` is its folder."""

    kind: ClassVar[str] = "toy"

    @classmethod
    def committed(cls) -> "ToyModel":
        """The toy model this repository ships (``qvedit/toy/weights``)."""
        return cls(str(TOY_WEIGHTS))


@dataclass
class RandomFullModel(ModelSettings):
    """``model=random_full`` (``random_full_21``): the full architecture of ``release``'s family with random weights
    (timing only); ``model_id`` is a label."""

    kind: ClassVar[str] = "random_full"


# perf.fp8_keep_bf16's default: the transformer's Linear layers that stay in bf16 under perf.quantize=fp8 (fnmatch
# patterns over module names). SGLang's validated Qwen-Image / Qwen-Image-Edit FP8 fallback set; why each is kept:
# qvedit/models/fp8.py.
FP8_KEEP_BF16 = ("img_in", "txt_in", "time_text_embed.*", "*.img_mod.*", "*.txt_mod.*", "*.img_mlp.net.2",
                 "norm_out.*", "proj_out")


STEP_CACHES = ("none", "taylorseer", "first_block")  # qvedit.models.step_cache builds each from diffusers.hooks


@dataclass
class PerfSettings:
    """``perf/``: speed and memory settings.

    ``attention_backend``, ``compile``, ``offload_text_encoder`` and ``group_offload`` compute what the
    plain pipeline computes; ``quantize=fp8`` and ``layerwise_fp8_storage`` round weights (and, for fp8,
    activations) to 8 bits, and ``cache`` reuses the transformer's work across denoising steps, so they change
    the frames and are recorded in the resume manifest.
    """

    attention_backend: Optional[str] = setting(None, help=(
        "diffusers attention backend (`_native_cudnn`, `flash`, ...); null = PyTorch SDPA"))
    compile: bool = setting(False, help="regional `torch.compile` of the repeated transformer blocks (`perf=fast`)")
    offload_text_encoder: bool = setting(False, help=(
        "text encoder and transformer take turns on the GPU via pinned memory (`perf=low_memory`)"))
    fuse_loras: bool = setting(True, help=(
        "merge `model.loras` into the transformer's weights once (no LoRA layers left to run); false keeps "
        "them as layers, so a sweep over their scales reuses the loaded model"))
    quantize: str = setting("none", frames=True, choices=("none", "fp8"), help=(
        "`fp8`: FP8 matmuls in the transformer's linear layers (torchao, scaled per row; `perf=fp8`). Needs "
        "compute capability >= 8.9 (Ada, Hopper or newer), `dtype=bf16` and `pip install 'qvedit[fp8]'`; "
        "changes the frames. Only then is torchao imported (its import warnings otherwise came with every "
        "run)"))
    fp8_keep_bf16: list = setting(default_factory=lambda: list(FP8_KEEP_BF16), frames=True, help=(
        "with `perf.quantize=fp8`: the transformer's Linear layers kept in bf16, as fnmatch patterns over "
        "module names (why each: `qvedit/models/fp8.py`)"))
    group_offload: bool = setting(False, help=(
        "the transformer block by block and the text encoder layer by layer reach the GPU from pinned CPU "
        "memory, copied on a side CUDA stream; the VAE stays (`perf=vram24`)"))
    layerwise_fp8_storage: bool = setting(False, frames=True, help=(
        "the transformer's weights wait in fp8 and are cast to the compute dtype layer by layer (diffusers' "
        "layerwise casting); changes the frames slightly"))
    cache: str = setting("none", frames=True, choices=STEP_CACHES, help=(
        "diffusers' step cache on the transformer: `taylorseer` (a fixed schedule of steps in full, the "
        "others extrapolated) or `first_block` (adaptive); changes the frames ([Step "
        "caching](performance.md#step-caching-perfcache))"))
    cache_interval: int = setting(5, frames=True, min=1, help=(
        "`taylorseer`: after the start, one step in full every N steps"))
    cache_start_step: int = setting(3, frames=True, min=1, help=(
        "`taylorseer`: steps 0 .. N-1 in full"))
    cache_stop_step: Optional[int] = setting(None, frames=True, min=1, help=(
        "`taylorseer`: steps from N on in full; null = to the end"))
    cache_order: int = setting(1, frames=True, min=0, max=4, help=(
        "`taylorseer`: order of the Taylor extrapolation (0: the last output again)"))
    cache_threshold: float = setting(0.05, frames=True, min=0, help=(
        "`first_block`: the first block's relative change above which a step is computed in full"))
    # the VAE's causal 3D convolutions computed as 2D ones on single frames: the same function (to float rounding)
    # with a third of the work, faster on the CPU (PyTorch runs 3D convolutions there on a slow path); off by default:
    # the frames of a run change in their last bits
    single_frame_vae: bool = setting(False, frames=True, help=(
        "the VAE's causal 3D convolutions computed as 2D ones on single frames: the same function to float "
        "rounding, about 10% less CPU time for the tiny demo; changes the last bits of every frame "
        "(`experiment=toy_cpu` sets it: the toy model was trained so)"))

    def __post_init__(self):
        self.fp8_keep_bf16 = [str(pattern) for pattern in self.fp8_keep_bf16]  # a ListConfig from Hydra

    def conflict(self, processes: int = 1) -> Optional[str]:
        """Why these settings do not go together (one line), or None."""
        fp8, streamed = self.quantize == "fp8", self.group_offload
        if fp8 and self.layerwise_fp8_storage:
            return ("perf.quantize=fp8 already stores the transformer's linear layers in fp8: leave "
                    "perf.layerwise_fp8_storage=false")
        if streamed and self.compile:
            return ("perf.compile does not combine with perf.group_offload: the offload hooks move weights inside "
                    "every block, which breaks the blocks' full-graph compile, and a streamed step waits on the "
                    "host-to-device copies rather than on the GPU: leave perf.compile=false")
        if self.layerwise_fp8_storage and self.compile:
            return ("perf.compile does not combine with perf.layerwise_fp8_storage (not tried together: the casts run "
                    "in hooks around every layer, inside the blocks that compile as one graph): leave one of them off")
        if streamed and self.offload_text_encoder:
            return ("perf.group_offload already keeps the text encoder in CPU memory (layer by layer): leave "
                    "perf.offload_text_encoder=false")
        if fp8 and (streamed or self.offload_text_encoder):
            other = "group_offload" if streamed else "offload_text_encoder"
            return (f"perf.quantize=fp8 does not combine with perf.{other} (not tried together: torchao's fp8 weights "
                    "are tensor subclasses, which these offloads move by hand): use one of them")
        if self.cache != "none" and streamed:
            return ("perf.cache does not combine with perf.group_offload: a cached step skips the blocks whose calls "
                    "bring their weights to the GPU and start copying the next ones: leave perf.cache=none")
        if self.cache != "none" and processes > 1:
            return (f"perf.cache does not combine with parallel.* degrees ({processes} processes; not tried together: "
                    "the cache's hooks would sit beside the hooks that split and gather each pass): leave "
                    "perf.cache=none under torchrun")
        if streamed and processes > 1:
            return (f"perf.group_offload runs one GPU's model from CPU memory; it does not combine with parallel.* "
                    f"degrees ({processes} processes): use perf=default under torchrun")
        return None

    def pipeline_key(self) -> tuple:
        """The settings that change the loaded pipeline's weights or where they live, for good: part of the
        loader's cache key, so a job with other values gets a freshly loaded pipeline."""
        key = (("quantize", self.quantize, *self.fp8_keep_bf16),) if self.quantize != "none" else ()
        return key + (("layerwise_fp8_storage",),) * self.layerwise_fp8_storage + (("group_offload",),) * \
            self.group_offload

    def host_components(self) -> tuple:
        """Components the loader leaves in CPU memory for ``qvedit.models.perf.prepare_pipeline`` to place:
        with group offloading the transformer and the text encoder never go to the GPU whole; fp8 moves the
        transformer there layer by layer as it quantizes, fp8 storage after casting it."""
        if self.group_offload:
            return ("transformer", "text_encoder")
        return ("transformer",) if self.quantize == "fp8" or self.layerwise_fp8_storage else ()


@dataclass
class ParallelSettings:
    """``parallel/``: one frame on several GPUs (or CPU processes), started by torchrun.

    Context parallelism reorders the attention sums, so its degrees change frames in the last bits;
    CFG parallelism computes each pass exactly as one process does, so ``cfg_degree`` does not. The two
    combine: ``cfg_degree=2, ulysses_degree=2`` runs each CFG pass on its own pair of GPUs (4 in all).
    """

    ulysses_degree: int = setting(1, frames=True, min=1, help=(
        "under torchrun: GPUs that split each attention by heads (Ulysses all-to-all)"))
    ring_degree: int = setting(1, frames=True, min=1, help=(
        "under torchrun: GPUs that pass K/V around a ring (uses the `_native_cudnn` kernel)"))
    cfg_degree: int = setting(1, min=1, max=2, help=(
        "under torchrun: 2 = true CFG's prompt and negative-prompt passes on two GPUs at once"))

    @property
    def degree(self) -> int:
        return self.context_degree * self.cfg_degree

    @property
    def context_degree(self) -> int:
        """How many GPUs share one transformer pass (context parallelism)."""
        return self.ulysses_degree * self.ring_degree

    def conflict(self, true_cfg_scale: float) -> Optional[str]:
        """Why these degrees cannot work with ``true_cfg_scale`` (one line), or None."""
        if self.cfg_degree == 2 and true_cfg_scale <= 1:
            return (f"parallel.cfg_degree=2 shares the two passes of true CFG, but true_cfg_scale={true_cfg_scale} "
                    "runs one: raise true_cfg_scale above 1 or use ulysses_degree=2")
        return None
