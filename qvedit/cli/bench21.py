"""Qwen-Image 2.1 in ``python -m qvedit.bench``: the ``q21_*`` variants, run on ``random_full_21`` (``--model
tiny``: ``tiny_21``) in the same run as 2509's variants, on a pipeline loaded for them after 2509's.

- ``q21_plain``: ``QwenImage21Pipeline.__call__`` with its own defaults (40 steps, no CFG, conditions at 1024²);
- ``q21_off`` / ``q21_edge_gram``: qvedit with ``model=qwen_image_21``'s steps and CFG, ``ttlg=off`` /
  ``ttlg=edge_gram`` guiding the last ``--last-steps`` steps (the guided step's cost on 2.1: the row's "s per guided
  step", against ``q21_off``);
- ``q21_off_nokv``: ``model.kv_cache=false`` (the text and condition tokens recomputed every step);
- ``q21_grid8_off`` / ``q21_grid8_edge_gram``: the fastest few-step setting diffusers documents for the pipeline, a
  fixed 8-step sampling grid (``model.sample_sigmas``) with the scheduler's shifting off (``model.scheduler``),
  guided on steps 0..6 as ``experiment=lightning`` guides its 8. diffusers shows that grid for a distilled
  checkpoint and calls it no recommended schedule for others: on the base model it times 8 steps, nothing more;
- ``q21_off_s06`` / ``q21_off_s04`` / ``q21_edge_gram_s06`` / ``q21_edge_gram_s04``: ``start.noise=warped`` at
  ``start.strength`` 0.6 / 0.4 on 2.1 (the last 24 / 16 of its 40 steps, from frame 0 warped and encoded by 2.1's
  VAE), as 2509's ``*_s06``.
"""

from __future__ import annotations

Q21_VARIANTS = ("q21_plain", "q21_off", "q21_edge_gram", "q21_off_nokv", "q21_grid8_off", "q21_grid8_edge_gram",
                "q21_off_s06", "q21_off_s04", "q21_edge_gram_s06", "q21_edge_gram_s04")
STEPS = 40  # Qwen's recommended steps for 2.1 (diffusers' QwenImage21Pipeline documentation and default)
# diffusers' QwenImage21Pipeline documentation, "Fixed sampling grids": an eight-step grid (the terminal 0 left out)
# and the scheduler settings that keep a grid as it is
GRID8 = (1.0, 0.978453, 0.954180, 0.926626, 0.895080, 0.845148, 0.704534, 0.414568)
GRID_SCHEDULER = {"use_dynamic_shifting": False, "shift": 1.0, "shift_terminal": None, "use_karras_sigmas": False,
                  "use_exponential_sigmas": False, "use_beta_sigmas": False}


def q21_preset(variant: str, last_steps: int) -> dict:
    """What a ``q21_*`` variant runs: its steps, CFG, scheduler values, guidance window and the family's call
    settings (``qvedit.models.family.image21.Image21``'s ``sample_sigmas`` and ``kv_cache``)."""
    grid = "_grid8" in variant
    return {"steps": len(GRID8) if grid else STEPS, "true_cfg_scale": 1.0, "scheduler": GRID_SCHEDULER if grid else {},
            "ttlg": {"last_steps": None, "end_step": len(GRID8) - 1} if grid else {"last_steps": last_steps},
            "family": {"sample_sigmas": GRID8 if grid else None, "kv_cache": not variant.endswith("_nokv")}}
