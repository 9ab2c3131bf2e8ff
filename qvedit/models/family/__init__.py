"""The model families qvedit runs: what it assumes about each one's diffusers pipeline, in one place per family.

A family is one diffusers pipeline class and everything qvedit does differently for it; the loop
(``qvedit.run.clip_editor``, ``qvedit.run.first_frame``, ``qvedit.guidance.guide``, ``qvedit.run.frame_plan``,
``qvedit.run.job``) asks the family instead of assuming one pipeline:

- ``qwen_edit_plus`` (``edit_plus.py``): ``QwenImageEditPlusPipeline``, Qwen-Image-Edit-2509 and -2511 (2511 is
  2509's transformer with ``zero_cond_t`` in its config);
- ``qwen_image_21`` (``image21.py``): ``QwenImage21Pipeline``, Qwen-Image 2.1.

Which family a run uses comes from ``model.release`` (``qvedit.settings.model.RELEASES``) before the model loads
(``family_for``), and from the pipeline's class once it is loaded (``family_of``). What each family relies on in
diffusers' internals is in ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` name the family).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from qvedit.models.family.base import Family
from qvedit.models.family.edit_plus import EditPlus
from qvedit.models.family.image21 import Image21
from qvedit.settings.model import RELEASES, ModelSettings

FAMILIES = {family.name: family for family in (EditPlus(), Image21())}  # their defaults
BY_PIPELINE = {family.pipeline_class: family for family in FAMILIES.values()}


def family_for(model: ModelSettings) -> Family:
    """The family of ``model.release``, with the settings of ``model`` its calls take (``model.kv_cache``, ...)."""
    return FAMILIES[model.family].configured(model)


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (by its class, or a subclass's; a wrapper that hands on its attributes, by
    its transformer's class), with its default call settings."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in BY_PIPELINE:
            return BY_PIPELINE[cls.__name__]
    transformer = type(getattr(pipe, "transformer", None)).__name__
    for family in FAMILIES.values():
        if family.transformer_class == transformer:
            return family
    raise ValueError(f"qvedit runs {', '.join(BY_PIPELINE)}, not {type(pipe).__name__}")


def presets_of(family: str) -> str:
    """The ``model=`` presets of ``family``'s real weights: ``model=qwen_edit_2509 or model=qwen_edit_2511``."""
    return " or ".join(f"model={about.preset}" for about in RELEASES.values() if about.family == family)


def pipeline_class_problem(model: ModelSettings, index: Optional[dict], where: str) -> Optional[str]:
    """Why the pipeline folder whose ``model_index.json`` holds ``index`` is not one ``model.release`` loads (one line
    naming the class it names and the preset that fits), or None. ``where``: the folder, or the hub id."""
    if not isinstance(index, dict) or "_class_name" not in index:
        return None  # its files are checked as it loads (integrity)
    named, family = index["_class_name"], FAMILIES[model.family]
    if named == family.pipeline_class:
        return None
    if named in BY_PIPELINE:
        fits = presets_of(BY_PIPELINE[named].name)
        return (f"model.model_id={where}: its model_index.json names {named}, but model.release={model.release} "
                f"({model.about.name}) runs {family.pipeline_class}: use {fits} with model.model_id={where}")
    known = "; ".join(f"{f.pipeline_class} ({presets_of(f.name)})" for f in FAMILIES.values())
    return (f"model.model_id={where}: its model_index.json names {named}, which qvedit does not run: qvedit runs "
            f"{known}")


def release_mismatch(model: ModelSettings, folder: Path) -> Optional[str]:
    """Where a pipeline folder of Qwen-Image-Edit-Plus holds the other release's transformer than ``model.release``
    says (2511's has ``zero_cond_t`` in its ``transformer/config.json``, 2509's not), a warning naming both; None
    otherwise. Both load alike; the release picks ``experiment=lightning``'s LoRA and names the model in messages."""
    if model.family != "qwen_edit_plus" or str(model.release) not in ("2509", "2511"):
        return None
    try:
        zero_cond_t = bool(json.loads((folder / "transformer" / "config.json").read_text()).get("zero_cond_t"))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    holds = "2511" if zero_cond_t else "2509"
    if holds == str(model.release):
        return None
    return (f"model.model_id={folder} holds Qwen-Image-Edit-{holds}'s transformer (zero_cond_t {zero_cond_t} in its "
            f"transformer/config.json), and model.release={model.release}: it runs as the folder's model; set "
            f"model.release={holds} (model=qwen_edit_{holds}) so that experiment=lightning picks its own LoRA")


def read_index(model_id: str) -> tuple[Optional[dict], Optional[Path]]:
    """(the parsed ``model_index.json`` of a local folder or a hub id already in the Hugging Face cache, the folder it
    lies in); (None, None) where there is none to read without loading (a damaged one is the loader's to report)."""
    folder = Path(model_id).expanduser()
    index = folder / "model_index.json"
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_id), "model_index.json")
        except Exception:  # not a hub id ("a/b/c", ""): from_pretrained says what it is
            return None, None
        if not isinstance(cached, str):
            return None, None
        index = Path(cached)
    try:
        return json.loads(index.read_text()), index.parent
    except (OSError, ValueError, UnicodeDecodeError):
        return None, None
