"""``first_frame/``: frame 0 made inside qvedit, an instruction edit of the source's frame 0 before the clip
(keys: docs/configuration.md); run by ``qvedit.run.first_frame``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from qvedit.settings.field_tags import setting


@dataclass
class FirstFrameSettings:
    """``first_frame/``: frame 0 made inside qvedit, an instruction edit of the source's frame 0 on the
    loaded pipeline before the clip (``qvedit.run.first_frame``); ``prompt`` null = frame 0 as given.

    The defaults are the model's own single-image edit settings (Qwen-Image-Edit-2509's example in the
    QwenLM/Qwen-Image README: 40 steps, true CFG 4, negative prompt " "); ``experiment=lightning`` sets
    the Lightning ones. Candidate k is seeded from (``seed``, k) alone, so ``candidates`` changes no frame;
    ``only`` stops before the clip and changes none either.
    """

    prompt: Optional[str] = setting(None, frames=True, help=(
        "an instruction that edits the source's frame 0 before the clip (`pipe(image=[source frame 0])`); "
        "null = frame 0 as given (see [Frame 0 edited inside "
        "qvedit](running.md#frame-0-edited-inside-qvedit-first_frame))"))
    num_inference_steps: int = setting(40, frames=True, min=1, max=1000, help=(
        "steps of frame 0's edit (the model's own single-image default; `experiment=lightning`: 8, "
        "`lightning_4step`: 4, `tiny_cpu`: 8)"))
    true_cfg_scale: float = setting(4.0, frames=True, min=0, help=(
        "true CFG of frame 0's edit (`experiment=lightning`: 1.0)"))
    negative_prompt: str = setting(" ", frames=True, help="negative prompt of frame 0's edit")
    candidates: int = setting(1, min=1, max=64, help=(
        "edits made, candidate k seeded from (`seed`, k), into `<run dir>/first_frame/`; not a frame setting "
        "(candidate k is the same whatever N is)"))
    pick: int = setting(0, frames=True, min=0, max=63, help=(
        "the candidate that becomes frame 0; another pick into the same folder reuses the candidates and "
        "starts the clip over"))
    only: bool = setting(False, help=(
        "make the candidates (and their contact sheet) and stop before the clip; not a frame setting"))

    def conflict(self) -> Optional[str]:
        """Why these keys do not go together (one line), or None."""
        if self.prompt is None:
            used = [f"first_frame.{f.name}={str(getattr(self, f.name)).lower()}" for f in dataclasses.fields(self)
                    if f.name in ("candidates", "pick", "only") and getattr(self, f.name) != f.default]
            if used:
                return (f"{', '.join(used)} without first_frame.prompt: give the instruction that edits frame 0 "
                        "(first_frame.prompt=\"make it a watercolour painting\"), or leave "
                        f"{'these' if len(used) > 1 else 'it'} out")
            return None
        if not self.prompt.strip():
            return ("first_frame.prompt is empty: give the instruction that edits frame 0 "
                    "(first_frame.prompt=\"make it a watercolour painting\"), or null to keep frame 0 as given")
        if self.pick >= self.candidates:
            return (f"first_frame.pick={self.pick} but first_frame.candidates={self.candidates} makes candidates "
                    f"0..{self.candidates - 1}: pick one of them, or raise first_frame.candidates to {self.pick + 1} "
                    "or more")
        return None
