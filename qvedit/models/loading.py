"""Obtaining a ``QwenImageEditPlusPipeline``: real weights, the tiny offline model, or random weights.

Real and tiny weights go through ``QwenImageEditPlusPipeline.from_pretrained``. A loaded pipeline is
kept for the life of the process, so a multirun sweep loads it once and every job reuses it. What a
job sets up on it (LoRAs, scheduler) is a ``lora.Variant``: its LoRA files are part of the cache key.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import torch

from qvedit.devices import check_device, torch_dtype
from qvedit.errors import QveditError
from qvedit.models.integrity import check_model_folder
from qvedit.models.lora import PLAIN, Variant

log = logging.getLogger(__name__)

# (kind, model_id, device, dtype, LoRAs) -> pipeline; holds at most one pipeline.
_loaded: dict[tuple, object] = {}


def quiet_library_bars() -> None:
    """Where stderr is a file (a batch job's log), diffusers' and transformers' loading bars would leave
    their redrawing escape codes in it: switch them off there."""
    if not sys.stderr.isatty():
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()


def _cached(key: tuple, make, variant: Variant = PLAIN):
    """The pipeline for ``key`` with ``variant``'s LoRAs: made once per process; a different key frees the
    previous one first. ``variant``'s scales and scheduler are set on it at every call."""
    quiet_library_bars()
    key = (*key, *variant.key())
    if key not in _loaded:
        _loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        pipe = make()
        variant.install(pipe)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        _loaded[key] = pipe
    return variant.configure(_loaded[key])


def load_pretrained(model_id: str, device: str, dtype: str, variant: Variant = PLAIN):
    """Load Qwen-Image-Edit-2509 from a hub id or a local folder, frozen, on ``device``.

    Reuses the pipeline already loaded by this process when the arguments match. A local folder is
    checked first (``integrity``), before the pipeline loaded now is let go.
    """
    local = Path(model_id).expanduser().is_dir()
    if local:
        check_model_folder(Path(model_id).expanduser())

    def make():
        from diffusers import QwenImageEditPlusPipeline

        check_device(device)
        log.info("loading %s on %s (%s)", model_id, device, dtype)
        try:
            # safetensors only: a pickled checkpoint (.bin, .pt) could run code when loaded
            pipe = QwenImageEditPlusPipeline.from_pretrained(str(model_id), dtype=torch_dtype(dtype),
                                                             use_safetensors=True)
        except QveditError:
            raise
        except Exception as err:  # a local folder: whatever the libraries raise on damage it did not catch
            if not (local or isinstance(err, (OSError, ValueError))):
                raise
            where = (f"the folder {model_id} does not load" if local else
                     "it is not a local pipeline folder and could not be fetched from the hub")
            raise QveditError(
                f"cannot load model {model_id!r}: {where} ({short_reason(err)}). Pass "
                "model.model_id=/path/to/Qwen-Image-Edit-2509 (safetensors weights), or try model=tiny"
            ) from None
        return pipe.to(device)

    return _cached(("pretrained", str(model_id), device, dtype), make, variant)


def short_reason(err: Exception, limit: int = 200) -> str:
    """The library's message in one line, without sentences that point at a traceback nobody is shown."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"[^.()]*\b(stacktrace|stack trace|traceback)\b[^.()]*\.?", "", text, flags=re.I).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def load_tiny(folder: str, device: str, dtype: str, variant: Variant = PLAIN):
    """The tiny offline model in ``folder``, built there first if it is missing."""
    folder = Path(folder).expanduser()
    if not (folder / "model_index.json").is_file():
        from qvedit.models.tiny import build_tiny_model

        log.info("building the tiny offline model in %s", folder)
        build_tiny_model(folder)
    return load_pretrained(str(folder), device, dtype, variant)


def load_random_full(device: str, dtype: str, variant: Variant = PLAIN):
    """``model=random_full``: the full 2509 architecture with random weights, for timing only."""
    from qvedit.models.random_full import build_random_full_pipeline

    return _cached(("random_full", device, dtype), lambda: build_random_full_pipeline(device, dtype), variant)
