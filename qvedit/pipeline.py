"""Obtaining a ``QwenImageEditPlusPipeline``: real weights, or the tiny offline model.

Both go through ``QwenImageEditPlusPipeline.from_pretrained``. A loaded pipeline is kept for the
life of the process, so a multirun sweep loads it once and every job reuses it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import torch

from qvedit.errors import QveditError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PIPELINE_VAE_AREA = 1024 * 1024  # what diffusers encodes condition images at

# (target, model_id, device, dtype) -> pipeline; holds at most one pipeline.
_loaded: dict[tuple, object] = {}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise QveditError(f"dtype={name!r} is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(device: str) -> str:
    """Return ``device`` if torch can use it, else raise a message that says what to pass."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QveditError(f"device={device} but no CUDA GPU is visible: pass device=cpu (slow) or run on a GPU machine")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise QveditError(f"device={device!r} is not usable here ({err}): pass device=cuda or device=cpu") from None
    return device


def _cached(key: tuple, make):
    """The pipeline for ``key``: made once per process; a different key frees the previous one first."""
    if key not in _loaded:
        _loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        pipe = make()
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        pipe.set_progress_bar_config(leave=False, desc="denoising")
        _loaded[key] = pipe
    return _loaded[key]


def load_pipeline(model_id: str, device: str, dtype: str):
    """Load Qwen-Image-Edit-2509 from a hub id or a local folder, frozen, on ``device``.

    Reuses the pipeline already loaded by this process when the arguments match.
    """
    def make():
        from diffusers import QwenImageEditPlusPipeline

        check_device(device)
        log.info("loading %s on %s (%s)", model_id, device, dtype)
        try:
            pipe = QwenImageEditPlusPipeline.from_pretrained(str(model_id), dtype=torch_dtype(dtype))
        except QveditError:
            raise
        except (OSError, ValueError, EnvironmentError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QveditError(
                f"cannot load model {model_id!r}: it is not a local pipeline folder and could not be fetched from "
                f"the hub ({first_line}). Pass model.model_id=/path/to/Qwen-Image-Edit-2509, or try model=tiny"
            ) from None
        return pipe.to(device)

    return _cached(("pretrained", str(model_id), device, dtype), make)


def load_tiny_pipeline(model_id: str, device: str, dtype: str):
    """The tiny offline model at ``model_id`` (a folder), built there first if it is missing."""
    folder = Path(os.path.expanduser(model_id))
    if not (folder / "model_index.json").is_file():
        from qvedit.tiny_model import build_tiny_model

        log.info("building the tiny offline model in %s", folder)
        build_tiny_model(folder)
    return load_pipeline(str(folder), device, dtype)


def load_random_full_pipeline(model_id: str, device: str, dtype: str):
    """``model=random_full``: the full 2509 architecture with random weights (``model_id`` is a label)."""
    from qvedit.random_full import build_random_full_pipeline

    return _cached(("random_full", device, dtype), lambda: build_random_full_pipeline(device, dtype))


def vae_area(condition_area, width: int, height: int) -> int:
    """The area (pixels) condition images are VAE-encoded at: a number, or ``output`` = W*H.

    Never so small that diffusers' rounding to multiples of 32 makes a side 0: the short side of
    a W x H condition image stays >= 32 pixels.
    """
    floor = 32 * 32 * max(width / height, height / width)
    if condition_area == "output":
        return max(width * height, math.ceil(floor))
    if isinstance(condition_area, int) and not isinstance(condition_area, bool) and condition_area >= 32 * 32:
        return max(condition_area, math.ceil(floor))
    raise QveditError(
        f"condition_area={condition_area!r} is not valid: use 'output' (the generation size) or a pixel count "
        f">= 1024 such as {PIPELINE_VAE_AREA} (the pipeline's default)"
    )


@contextlib.contextmanager
def condition_area(area: int) -> Iterator[None]:
    """Encode condition images at ``area`` pixels inside the block, instead of diffusers' fixed 1 MP.

    diffusers reads the module constant ``VAE_IMAGE_SIZE`` on every call and offers no argument for
    it; setting it for the duration of one call (and restoring it after) is the only way that
    neither edits site-packages nor copies the denoising loop.
    """
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    saved = module.VAE_IMAGE_SIZE
    module.VAE_IMAGE_SIZE = area
    try:
        yield
    finally:
        module.VAE_IMAGE_SIZE = saved
