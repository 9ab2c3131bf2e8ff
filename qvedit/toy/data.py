"""What the toy edit model learns from: synthetic clips, their edge maps, restyled copies, and the prompts.

Three kinds of example, each laid out as the pipeline lays out its call (``qvedit.toy.train`` mirrors it):

- ``follow``: ``image=[edge_t, frame t-d]`` with the default prompt -> frame t (d = 1 mostly, up to 16 for
  keyframes), in the clip's style: the edge map comes from the unstyled source frame, as qvedit makes it;
- ``anchor``: ``image=[edge_t, frame t-d, frame 0]`` with the three-image prompt (``anchor.first_frame_image``);
- ``instruct``: ``image=[frame t]`` with one of ``INSTRUCTIONS`` -> frame t restyled (``first_frame.prompt``).

With probability ``PROMPT_DROP`` an example's prompt is the negative prompt " " (for ``instruct`` the target is then
the frame itself): true CFG has an unconditional branch to contrast with.

Clip seeds: training clips are ``0 .. clips-1``; held-out clips (tests, benchmarks, ``io=shapes``) start at ``qvedit.settings.io.SHAPES_HELD_OUT_SEED``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qvedit.io.shapes import STYLES, ToyScene, edge_frame
from qvedit.settings.anchor import THREE_IMAGE_PROMPT
from qvedit.settings.run import DEFAULT_PROMPT

INSTRUCTIONS = {  # what first_frame.prompt can ask the toy model, and the style each gives
    "make it a watercolour painting": "watercolour",
    "night": "night",
    "make the shapes red": "red",
    "make it black and white": "mono",
}
NEGATIVE_PROMPT = " "  # qvedit's default negative prompt: the unconditional branch of true CFG
KINDS = {"follow": 0.65, "anchor": 0.10, "instruct": 0.25}  # share of training steps
PROMPT_DROP = 0.1
MAX_GAP = 16  # the longest frame distance between a condition frame and its target


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on; recorded beside the weights it made."""

    seed: int = 0
    clips: int = 300
    clip_length: int = 24
    size: tuple = (64, 64)
    styled_share: float = 0.6  # clips drawn in one of the styles other than "none"
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32  # the VAE learns from crops of this many pixels a side
    vae_lr: float = 1e-3
    transformer_steps: int = 2400
    batch: int = 16
    lr: float = 4e-4
    ema: float = 0.999
    pool: int = 32  # prompt encodings kept per (prompt, image count)

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def clip_style(recipe: Recipe, clip: int) -> str:
    """The style training clip ``clip`` is drawn in."""
    rng = np.random.default_rng([recipe.seed, clip, 0x57])
    others = [style for style in STYLES if style != "none"]
    return others[int(rng.integers(len(others)))] if rng.random() < recipe.styled_share else "none"


def render_clip(seed: int, length: int, size: tuple, style: str) -> dict:
    """{"source", "styled", "edges"}: (T, H, W, 3) uint8 arrays of the clip of ``seed`` (edges as grey RGB)."""
    scene = ToyScene.from_seed(seed, tuple(size))
    source = np.stack([scene.frame(t) for t in range(length)])
    styled = source if style == "none" else np.stack([scene.frame(t, style) for t in range(length)])
    edges = np.stack([np.repeat(edge_frame(frame)[..., None], 3, axis=-1) for frame in source])
    return {"source": source, "styled": styled, "edges": edges}


@dataclass(frozen=True)
class Example:
    """One training example: indices into a clip's frames. ``conditions`` are (kind, frame) pairs with kind one of
    "edges", "styled", "source"; the target is ``target`` = (kind, frame)."""

    kind: str
    clip: int
    prompt: str
    conditions: tuple
    target: tuple


def draw_example(rng: np.random.Generator, kind: str, recipe: Recipe, styles: list[str]) -> Example:
    """A random example of ``kind`` from the training clips (``styles[c]``: clip c's style)."""
    length = recipe.clip_length
    drop = rng.random() < PROMPT_DROP
    if kind == "instruct":
        styled = [c for c, style in enumerate(styles) if style != "none"]
        clip, t = int(rng.choice(styled)), int(rng.integers(length))
        instruction = next(text for text, style in INSTRUCTIONS.items() if style == styles[clip])
        return Example(kind, clip, NEGATIVE_PROMPT if drop else instruction, (("source", t),),
                       ("source", t) if drop else ("styled", t))
    clip = int(rng.integers(recipe.clips))
    t = int(rng.integers(2 if kind == "anchor" else 1, length))
    gap = 1 if rng.random() < 0.75 else int(rng.integers(1, min(MAX_GAP, t) + 1))
    if kind == "anchor":
        gap = min(gap, t - 1)  # the frame followed is not frame 0 itself
        conditions = (("edges", t), ("styled", t - gap), ("styled", 0))
        prompt = THREE_IMAGE_PROMPT
    else:
        conditions = (("edges", t), ("styled", t - gap))
        prompt = DEFAULT_PROMPT
    return Example(kind, clip, NEGATIVE_PROMPT if drop else prompt, conditions, ("styled", t))


def prompt_keys() -> list[tuple[str, int]]:
    """(prompt, number of condition images) of every prompt encoding the examples need."""
    keys = [(DEFAULT_PROMPT, 2), (THREE_IMAGE_PROMPT, 3)] + [(text, 1) for text in INSTRUCTIONS]
    return keys + [(NEGATIVE_PROMPT, n) for n in (1, 2, 3)]
