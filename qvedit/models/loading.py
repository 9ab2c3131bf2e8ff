"""Obtaining the pipeline of the model's family (``QwenImageEditPlusPipeline`` for Qwen-Image-Edit-2509 and -2511,
``QwenImage21Pipeline`` for Qwen-Image 2.1, ``qvedit.models.family``): real weights, the tiny offline model, or random
weights.

``load_pipeline(model, device, dtype, perf)`` builds what the ``model`` settings name. Real and tiny
weights go through the family's ``from_pretrained``. A loaded pipeline is kept for the life
of the process (``qvedit.models.cache``, one at a time), so a multirun sweep loads it once and every job
reuses it. What a job sets up on it (LoRAs, scheduler) is a ``lora.Variant``: its LoRA files are part of
the cache key.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Optional

import torch

from qvedit.core.errors import QveditError, short_reason
from qvedit.models import cache
from qvedit.models.devices import check_device, torch_dtype
from qvedit.models.family import Family, family_for, pipeline_class_problem, read_index, release_mismatch
from qvedit.models.integrity import check_model_folder, check_toy_weights
from qvedit.models.lora import PLAIN, Variant
from qvedit.settings.model import ModelSettings, PerfSettings, TinyModel

log = logging.getLogger(__name__)


def load_pipeline(model: ModelSettings, device: str, dtype: str, perf: Optional[PerfSettings] = None):
    """The pipeline the ``model`` settings name, frozen, with their LoRAs and scheduler.

    Args:
        model: ``model/``'s settings; ``model.kind`` says how the pipeline is obtained (``pretrained``: a hub
            id or a local folder, ``tiny``: the offline toy model, built on first use, ``random_full``: the
            full architecture with random weights).
        device: where the pipeline runs (``cuda``, ``cuda:N``, ``cpu``).
        dtype: ``bf16``, ``fp16`` or ``fp32``.
        perf: the ``perf/`` settings; those that change the weights or where they live for good
            (``PerfSettings.pipeline_key``) are applied as it loads, the others by ``apply_perf`` later.

    Returns:
        The pipeline of the model's family (``model.release``), the one this process already holds when every
        argument matches.
    """
    variant = Variant.of(model.loras, perf.fuse_loras if perf is not None else True, model.scheduler)
    family = family_for(model)
    if model.kind == "tiny":
        return load_tiny(model.model_id, device, dtype, perf, variant, family, model)
    if model.kind == "toy":
        check_toy_weights(Path(model.model_id).expanduser())
        return load_pretrained(model.model_id, device, dtype, perf, variant, family, model)
    if model.kind == "random_full":
        return load_random_full(device, dtype, perf, variant, family)
    return load_pretrained(model.model_id, device, dtype, perf, variant, family, model)


def quiet_library_bars() -> None:
    """Where stderr is a file (a batch job's log), diffusers' and transformers' loading bars would leave
    their redrawing escape codes in it: switch them off there."""
    if not sys.stderr.isatty():
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()


def _cached(key: tuple, make, device: str, perf: Optional[PerfSettings] = None, variant: Variant = PLAIN):
    """The pipeline for ``key`` with ``variant``'s LoRAs: made once per process; a different key frees the
    previous one first. ``variant``'s scales and scheduler are set on it at every call.

    The ``perf`` settings that change the pipeline for good (``PerfSettings.pipeline_key``) are part of
    the key and applied here, once, after the LoRAs: a job that asks for other values gets a freshly
    loaded pipeline instead of one quantized or offloaded for an earlier job.
    """
    quiet_library_bars()

    def build():
        if cache.release("pipeline"):  # free the pipeline loaded now before the next one loads: compiled
            torch._dynamo.reset()  # code and the pipeline's own hooks and wrappers still refer to it
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            getattr(torch._C, "_host_emptyCache", lambda: None)()  # pinned chunks of group offloading
        pipe = make()
        variant.install(pipe)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        if perf is not None and perf.pipeline_key():
            from qvedit.models.perf import prepare_pipeline

            prepare_pipeline(pipe, perf, device)
        return pipe

    # (pipeline, kind, model_id, device, dtype, LoRAs, *perf.pipeline_key()): at most one is held
    key = ("pipeline", *key, *variant.key(), *(perf.pipeline_key() if perf is not None else ()))
    return variant.configure(cache.shared(key, build))


def place(pipe, device: str, on_host: tuple = ()):
    """``pipe`` with every component on ``device`` but those named in ``on_host``, left in CPU memory."""
    if not on_host:
        return pipe.to(device)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in on_host:
            component.to(device)
    return pipe


def load_pretrained(model_id: str, device: str, dtype: str, perf: Optional[PerfSettings] = None,
                    variant: Variant = PLAIN, family: Optional[Family] = None, model: Optional[ModelSettings] = None):
    """Load the model from a hub id or a local folder, frozen, on ``device`` (what ``perf`` places itself waits in
    CPU memory until it does).

    Reuses the pipeline already loaded by this process when the arguments match. A local folder is
    checked first (``integrity``, and the pipeline class its ``model_index.json`` names), before the pipeline
    loaded now is let go.

    Args:
        model_id: a hub id (``Qwen/Qwen-Image-Edit-2509``) or a folder in the diffusers layout
            (safetensors weights only).
        device, dtype, perf: as ``load_pipeline`` takes them.
        variant: the LoRAs and scheduler values to set up on it (``Variant.of``); ``PLAIN``: none.
        family: the family whose pipeline class loads it (``qvedit.models.family``); None: Qwen-Image-Edit-Plus.
        model: the settings naming it (the release, for messages); None: ``model.release=2509``'s.

    Returns:
        The frozen pipeline (every component in eval mode, no gradients).
    """
    model = model or ModelSettings(str(model_id))
    family = family or family_for(model)
    local = Path(model_id).expanduser().is_dir()
    if local:
        check_model_folder(Path(model_id).expanduser())
        refused = pipeline_class_problem(model, read_index(model_id)[0], str(model_id))
        if refused:
            raise QveditError(refused)
        mismatch = release_mismatch(model, Path(model_id).expanduser())
        if mismatch:
            log.warning(mismatch)

    def make():
        check_device(device)
        log.info("loading %s on %s (%s)", model_id, device, dtype)
        try:
            # safetensors only: a pickled checkpoint (.bin, .pt) could run code when loaded
            pipe = family.pipeline_type().from_pretrained(str(model_id), dtype=torch_dtype(dtype),
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
                f"model.model_id=/path/to/{model.about.name.replace(' ', '-')} (safetensors weights), or try "
                f"{'model=tiny_21' if family.name == 'qwen_image_21' else 'model=tiny'}"
            ) from None
        return place(pipe, device, perf.host_components() if perf is not None else ())

    return _cached(("pretrained", str(model_id), device, dtype), make, device, perf, variant)


def availability_problem(model: ModelSettings) -> Optional[str]:
    """Why the model cannot be loaded at all, found before anything loads (None when it can, or may): a folder (or
    a hub id in the Hugging Face cache) whose ``model_index.json`` names another pipeline class than the release's;
    not a local folder and not in the Hugging Face cache, while offline or with the hub out of reach."""
    model_id = model.model_id
    index, _ = read_index(model_id)
    if index is not None:
        return pipeline_class_problem(model, index, str(model_id))  # a folder's files are checked when it loads
    if Path(model_id).expanduser().is_dir():
        return None
    from huggingface_hub import constants, file_exists, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(str(model_id), "model_index.json"), str):
            return None
    except Exception:  # not a hub id either ("a/b/c", an empty string): from_pretrained says what it is
        return None
    name = model.about.name.replace(" ", "-")
    tiny = "model=tiny_21" if model.family == "qwen_image_21" else "model=tiny"
    fix = (f"download it first (huggingface-cli download {model_id}) or pass model.model_id=/path/to/{name} "
           f"(safetensors weights), or try {tiny}")
    if constants.HF_HUB_OFFLINE:
        return (f"cannot load model {model_id!r} offline (HF_HUB_OFFLINE): it is not a local folder and not in the "
                f"Hugging Face cache {constants.HF_HUB_CACHE}: {fix}")
    try:
        found = file_exists(str(model_id), "model_index.json")
    except Exception as err:  # no network, a proxy, a hub that is down
        return (f"cannot load model {model_id!r}: it is not a local folder, not in the Hugging Face cache, and the "
                f"hub cannot be reached ({short_reason(err, 120)}): {fix}")
    return None if found else (f"cannot load model {model_id!r}: it is not a local folder and the hub has no "
                               f"pipeline of that name: {fix}")


def load_tiny(folder: str, device: str, dtype: str, perf: Optional[PerfSettings] = None, variant: Variant = PLAIN,
              family: Optional[Family] = None, model: Optional[ModelSettings] = None):
    """The tiny offline model of ``family`` (None: Qwen-Image-Edit-Plus) in ``folder``, built there first if it is
    missing; ``model``: the settings naming it (None: ``model=tiny`` or ``tiny_21``'s)."""
    folder = Path(folder).expanduser()
    model = model or TinyModel.in_cache("2.1" if family is not None and family.name == "qwen_image_21" else "2509")
    if not (folder / "model_index.json").is_file():
        from qvedit.models.tiny import build_tiny_model
        from qvedit.models.tiny21 import build_tiny_21_model

        log.info("building the tiny offline model (%s) in %s", model.about.name, folder)
        (build_tiny_21_model if model.family == "qwen_image_21" else build_tiny_model)(folder)
    return load_pretrained(str(folder), device, dtype, perf, variant, family, model)


def load_random_full(device: str, dtype: str, perf: Optional[PerfSettings] = None, variant: Variant = PLAIN,
                     family: Optional[Family] = None):
    """``model=random_full`` (``random_full_21``): the full architecture of ``family`` (None: 2509's) with random
    weights, for timing only. It is built on the GPU (seeded: every build has the same weights), so ``perf`` moves
    what it offloads from there."""
    from qvedit.models.random_full import build_random_full_pipeline

    name = family.name if family is not None else "qwen_edit_plus"
    return _cached(("random_full", name, device, dtype), lambda: build_random_full_pipeline(device, dtype, family=name),
                   device, perf, variant)
