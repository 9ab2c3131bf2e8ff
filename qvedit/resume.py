"""Resuming a run: a frames folder remembers the settings its frames were made with.

Re-running into the same run folder (``hydra.run.dir=RUN``) keeps the finished frames and goes on
from the first missing one. Per-frame seeding makes the result identical to an uninterrupted run.
A re-run whose settings would change the frames is refused, naming the keys that differ.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from qvedit.confdiff import diff_configs, flatten
from qvedit.errors import QveditError

MANIFEST = ".qvedit-run.yaml"
# Keys whose values change the frames (max_frames may grow; device, metrics and paths may change).
FRAME_KEYS = ("model", "prompt", "negative_prompt", "num_inference_steps", "true_cfg_scale", "seed", "dtype",
              "condition_area", "max_area", "ttlg", "io.init_frame", "io.edge_frames_dir", "io.rgb_video",
              "io.edge_video", "io.resize", "io.edge_op")
IGNORED = ("ttlg.decode_checkpointing",)  # the same numbers either way


def frame_settings(cfg: DictConfig) -> dict[str, object]:
    """The resolved values of FRAME_KEYS, flat."""
    values = {}
    for key in FRAME_KEYS:
        node = OmegaConf.select(cfg, key, default=None)
        if isinstance(node, DictConfig):
            values.update(flatten(OmegaConf.to_container(node, resolve=True), f"{key}."))
        elif node is not None:
            values[key] = node
    return {k: v for k, v in values.items() if k not in IGNORED}


def check_or_record(frames_dir: Path, settings: dict[str, object]) -> None:
    """Refuse to add frames to a folder made with other settings; remember these settings otherwise."""
    manifest = frames_dir / MANIFEST
    has_frames = (frames_dir / "00000.png").exists()
    if has_frames and manifest.is_file():
        before = OmegaConf.to_container(OmegaConf.load(manifest))
        differing = diff_configs(before, settings)
        if differing:
            listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differing)
            raise QveditError(
                f"{frames_dir} holds frames made with other settings ({listed}): resume with the same settings, "
                "or write to a new folder (another hydra.run.dir or io.out_frames_dir)"
            )
        return
    if has_frames:
        raise QveditError(f"{frames_dir} already holds frames that qvedit did not record: choose an empty folder "
                          "(another hydra.run.dir or io.out_frames_dir)")
    partial = manifest.with_name(MANIFEST + ".partial")
    partial.write_text(OmegaConf.to_yaml(OmegaConf.create(settings)))
    os.replace(partial, manifest)
