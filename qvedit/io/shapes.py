"""Synthetic clips of shapes under a moving camera: what the toy edit model learns from and is judged on.

A clip is drawn from a seed alone (``ToyScene.from_seed``): two to four shapes (circles, squares, triangles,
stars, rings) with colours and textures (flat, stripes, dots, gradients, noise patterns) on a textured
background (gradient, stripes, checks, noise), each moving, turning and scaling across the frames, passing in
front of each other, under a camera that pans and zooms slowly while the light changes. The edge maps are
made exactly as qvedit makes them from source frames (``qvedit.io.frames.EdgeMaker``).

``STYLES`` are the looks the instructions of ``qvedit.toy.data.INSTRUCTIONS`` ask for: a clip drawn in a
style is the same scene restyled, frame by frame (the shapes recoloured for ``red``).

Frames are drawn at twice the size and averaged down (anti-aliased edges), as (H, W, 3) uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qvedit.core.images import to_tensor
from qvedit.guidance.edges import edge_map, edges_to_uint8

SHAPES = ("circle", "square", "triangle", "star", "ring")
TEXTURES = ("flat", "stripes", "dots", "gradient", "noise")
BACKGROUNDS = ("gradient", "stripes", "checks", "noise")
STYLES = ("none", "watercolour", "night", "red", "mono")  # "none": the scene as drawn
SUPERSAMPLE = 2


def smooth_noise(rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """A (cells, cells) grid of values in [0, 1], sampled bilinearly by ``sample_grid`` (a smooth pattern)."""
    return rng.random((cells, cells)).astype(np.float32)


def sample_grid(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``grid`` (n, n) sampled bilinearly at (u, v) in grid cells, wrapping around: a tiling smooth pattern."""
    n = grid.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    i0, j0 = u0.astype(np.int64) % n, v0.astype(np.int64) % n
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    top = grid[j0, i0] * (1 - fu) + grid[j0, i1] * fu
    bottom = grid[j1, i0] * (1 - fu) + grid[j1, i1] * fu
    return top * (1 - fv) + bottom * fv


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: a random hue at high saturation and medium-to-high value, RGB in [0, 1]."""
    hue, sat, val = rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return (val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


@dataclass(frozen=True)
class Shape:
    kind: str
    texture: str
    colour: np.ndarray  # (3,) base colour
    second: np.ndarray  # (3,) the texture's other colour
    radius: float  # in pixels at frame 0 (frame size units)
    position: np.ndarray  # (2,) x, y at frame 0, pixels
    velocity: np.ndarray  # (2,) pixels per frame
    angle: float  # radians at frame 0
    spin: float  # radians per frame
    growth: float  # relative size change per frame
    pattern: np.ndarray  # (n, n) smooth noise for the noise texture
    frequency: float  # stripes and dots per radius


@dataclass(frozen=True)
class ToyScene:
    """One clip's scene: everything ``frame(t)`` draws is decided here from the seed."""

    size: tuple[int, int]  # (W, H)
    background: str
    back_colours: tuple[np.ndarray, np.ndarray]
    back_pattern: np.ndarray
    back_frequency: float
    back_angle: float
    shapes: tuple[Shape, ...]
    pan: np.ndarray  # (2,) camera drift, pixels per frame
    zoom: float  # relative zoom per frame
    light: np.ndarray  # (3,) light colour change per frame (multiplicative)

    @classmethod
    def from_seed(cls, seed: int, size: tuple[int, int] = (64, 64)) -> "ToyScene":
        rng = np.random.default_rng([seed, 0x70F])
        width, height = size
        scale = min(width, height)
        shapes = []
        for _ in range(int(rng.integers(2, 5))):
            shapes.append(Shape(
                kind=SHAPES[int(rng.integers(len(SHAPES)))], texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                colour=random_colour(rng), second=random_colour(rng) * rng.uniform(0.3, 1.0),
                radius=scale * rng.uniform(0.12, 0.24),
                position=np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height]),
                velocity=rng.normal(0, 0.9, 2) * scale / 64, angle=rng.uniform(0, 2 * math.pi),
                spin=rng.normal(0, 0.05), growth=rng.normal(0, 0.006), pattern=smooth_noise(rng, 5),
                frequency=rng.uniform(1.5, 3.5)))
        back = (random_colour(rng) * rng.uniform(0.35, 0.9), random_colour(rng) * rng.uniform(0.35, 0.9))
        return cls(size=size, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], back_colours=back,
                   back_pattern=smooth_noise(rng, 8), back_frequency=rng.uniform(2.0, 6.0) / scale,
                   back_angle=rng.uniform(0, math.pi), shapes=tuple(shapes),
                   pan=rng.normal(0, 0.5, 2) * scale / 64, zoom=rng.normal(0, 0.004),
                   light=1 + rng.normal(0, 0.006, 3))

    def frame(self, t: int, style: str = "none") -> np.ndarray:
        """Frame ``t`` as (H, W, 3) uint8, in ``style`` (one of ``STYLES``)."""
        width, height = self.size
        ss = SUPERSAMPLE
        ys, xs = np.mgrid[0:height * ss, 0:width * ss].astype(np.float32)
        xs, ys = (xs + 0.5) / ss, (ys + 0.5) / ss
        centre = np.array([width / 2, height / 2], dtype=np.float32)
        zoom = (1 + self.zoom) ** t
        wx = centre[0] + (xs - centre[0]) / zoom + self.pan[0] * t  # world coordinates of each pixel
        wy = centre[1] + (ys - centre[1]) / zoom + self.pan[1] * t
        image = self._background(wx, wy)
        for shape in self.shapes:
            inside, colour = self._shape(shape, t, wx, wy, style)
            image = np.where(inside[..., None], colour, image)
        image = image * np.clip(self.light ** t, 0.4, 1.6)
        image = image.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))
        image = restyle(np.clip(image, 0, 1), style, self.back_pattern)
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)

    def _background(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        low, high = self.back_colours
        along = wx * math.cos(self.back_angle) + wy * math.sin(self.back_angle)
        if self.background == "gradient":
            mix = np.clip(0.5 + 0.5 * np.sin(along * self.back_frequency * 0.7), 0, 1)
        elif self.background == "stripes":
            mix = (np.sin(along * self.back_frequency * math.pi) > 0).astype(np.float32)
        elif self.background == "checks":
            cell = 1 / self.back_frequency
            mix = ((np.floor(wx / cell) + np.floor(wy / cell)) % 2).astype(np.float32)
        else:
            mix = sample_grid(self.back_pattern, wx * self.back_frequency, wy * self.back_frequency)
        mix = mix[..., None]
        return low * (1 - mix) + high * mix

    def _shape(self, shape: Shape, t: int, wx: np.ndarray, wy: np.ndarray, style: str):
        """(inside mask, colour per pixel) of ``shape`` at frame ``t``."""
        position = shape.position + shape.velocity * t
        radius = shape.radius * (1 + shape.growth) ** t
        angle = shape.angle + shape.spin * t
        dx, dy = (wx - position[0]) / radius, (wy - position[1]) / radius
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # shape-local coordinates, radius 1
        r = np.hypot(u, v)
        if shape.kind == "circle":
            inside = r < 1
        elif shape.kind == "square":
            inside = np.maximum(abs(u), abs(v)) < 0.8
        elif shape.kind == "ring":
            inside = (r < 1) & (r > 0.55)
        elif shape.kind == "triangle":
            inside = np.ones_like(r, dtype=bool)
            for k in range(3):
                a = 2 * math.pi * k / 3
                inside &= u * math.cos(a) + v * math.sin(a) < 0.5
        else:  # star: five points
            theta = np.arctan2(v, u)
            inside = r < 0.55 + 0.45 * np.abs(np.cos(2.5 * theta)) ** 3
        base, second = shape.colour, shape.second
        if style == "red":
            base, second = np.array([0.85, 0.1, 0.1], np.float32), np.array([0.45, 0.03, 0.05], np.float32)
        if shape.texture == "flat":
            mix = np.zeros_like(u)
        elif shape.texture == "stripes":
            mix = (np.sin(u * shape.frequency * math.pi) > 0).astype(np.float32)
        elif shape.texture == "dots":
            fu, fv = (u * shape.frequency) % 1 - 0.5, (v * shape.frequency) % 1 - 0.5
            mix = (fu ** 2 + fv ** 2 < 0.09).astype(np.float32)
        elif shape.texture == "gradient":
            mix = np.clip(0.5 + 0.5 * v, 0, 1)
        else:
            mix = sample_grid(shape.pattern, (u + 1) * 2, (v + 1) * 2)
        colour = base * (1 - mix[..., None]) + second * mix[..., None]
        return inside, colour


def restyle(image: np.ndarray, style: str, grain: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] in ``style``; ``grain`` (n, n) gives the watercolour paper its pattern."""
    if style in ("none", "red"):
        return image
    if style == "night":
        luma = image @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        return 0.08 + 0.45 * (0.55 * image + 0.45 * luma[..., None]) * np.array([0.55, 0.7, 1.15], np.float32)
    if style == "mono":
        luma = image @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        return np.repeat(luma[..., None], 3, axis=-1)
    if style == "watercolour":
        soft = blur(image, 1.2)
        levels = np.round(soft * 5) / 5
        washed = 0.55 * soft + 0.25 * levels + 0.2
        edges = edge_map(to_tensor((np.clip(soft, 0, 1) * 255).astype(np.uint8)), "sobel")[0, 0].numpy()
        height, width = image.shape[:2]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        paper = sample_grid(grain, xx / 5, yy / 5)[..., None]
        return washed * (0.93 + 0.07 * paper) - 0.35 * edges[..., None]
    raise ValueError(f"unknown style {style!r}: one of {', '.join(STYLES)}")


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) Gaussian blur with edge padding (a separable 7-tap kernel)."""
    taps = np.arange(-3, 4, dtype=np.float32)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((3, 3), (0, 0), (0, 0)), mode="edge")
    image = sum(k * padded[i:i + image.shape[0]] for i, k in enumerate(kernel))
    padded = np.pad(image, ((0, 0), (3, 3), (0, 0)), mode="edge")
    return sum(k * padded[:, i:i + image.shape[1]] for i, k in enumerate(kernel))


def edge_frame(frame: np.ndarray, op: str = "sobel") -> np.ndarray:
    """The edge map qvedit makes from a source frame (``EdgeMaker``): (H, W) uint8."""
    return edges_to_uint8(edge_map(to_tensor(frame), op))


def toy_clip(seed: int, length: int, size: tuple[int, int] = (64, 64), style: str = "none") -> list[np.ndarray]:
    """Frames 0..length-1 of the scene of ``seed`` in ``style``, each (H, W, 3) uint8."""
    scene = ToyScene.from_seed(seed, size)
    return [scene.frame(t, style) for t in range(length)]
