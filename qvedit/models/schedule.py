"""The scheduler a run will use, read before its model loads, so that a step count it cannot run is said first.

The model's ``scheduler/scheduler_config.json`` (a local folder, the tiny model's folder, or the Hugging Face
cache) with ``model.scheduler`` over it. Where it cannot be read here (a hub model not in the cache, the random
model built in code), ``qvedit.start.starts.FrameStarts`` checks the loaded pipeline's scheduler instead, still
before the first frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from qvedit.models.diffusers_compat.start import schedule_problem
from qvedit.settings.model import ModelSettings

SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def planned_scheduler_config(model: ModelSettings) -> Optional[dict]:
    """The scheduler config a run of ``model`` will use, or None when it cannot be read before loading."""
    if model.kind == "random_full":
        return None
    folder = Path(model.model_id).expanduser()
    path: Optional[object] = folder / SCHEDULER_CONFIG if folder.is_dir() else None
    if path is None and model.kind == "pretrained":
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(str(model.model_id), SCHEDULER_CONFIG)
        except Exception:  # not a hub id: the loader says what it is
            return None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # damaged: the loader says so
        return None
    return {**config, **model.scheduler} if isinstance(config, dict) else None


def planned_schedule_problem(model: ModelSettings, num_steps: int) -> Optional[str]:
    """Why ``num_inference_steps=num_steps`` cannot run with the scheduler ``model`` will use (one line), or None
    (also when that scheduler cannot be read before the model loads)."""
    try:
        return schedule_problem(planned_scheduler_config(model), num_steps)
    except Exception:  # a model.scheduler value the scheduler does not take: check_model says which
        return None
