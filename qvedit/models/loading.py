"""Obtaining a ``QwenImageEditPlusPipeline``: real weights, the tiny offline model, or random weights.

Real and tiny weights go through ``QwenImageEditPlusPipeline.from_pretrained``. A loaded pipeline is
kept for the life of the process, so a multirun sweep loads it once and every job reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qvedit.devices import check_device, torch_dtype
from qvedit.errors import QveditError

log = logging.getLogger(__name__)

# (kind, model_id, device, dtype) -> pipeline; holds at most one pipeline.
_loaded: dict[tuple, object] = {}


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


def load_pretrained(model_id: str, device: str, dtype: str):
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


def load_tiny(folder: str, device: str, dtype: str):
    """The tiny offline model in ``folder``, built there first if it is missing."""
    folder = Path(folder).expanduser()
    if not (folder / "model_index.json").is_file():
        from qvedit.models.tiny import build_tiny_model

        log.info("building the tiny offline model in %s", folder)
        build_tiny_model(folder)
    return load_pretrained(str(folder), device, dtype)


def load_random_full(device: str, dtype: str):
    """``model=random_full``: the full 2509 architecture with random weights, for timing only."""
    from qvedit.models.random_full import build_random_full_pipeline

    return _cached(("random_full", device, dtype), lambda: build_random_full_pipeline(device, dtype))
