"""Guidance losses on decoded frames: soft-edge L1, VGG16 Gram style, temporal L1 and CIELAB colour statistics.

All inputs are images in [0,1]; every loss is differentiable with respect to its first argument
and returns a 0-dim tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from qvedit.core.errors import QveditError
from qvedit.guidance.edges import edge_map
from qvedit.models import cache
from qvedit.settings.guidance import VGG_WEIGHTS

# relu1_2, relu2_2, relu3_3, relu4_3 in torchvision's vgg16().features.
STYLE_LAYERS = (3, 8, 15, 22)
VGG_SMALLEST_INPUT = 8  # relu4_3 comes after 3 pools: a side below 8 pixels vanishes
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_RANDOM_SEED = 0


def resize_long_side(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,h,w) with max(h,w) == min(size, max(H,W)), aspect kept.

    Never upsamples; ``size=None`` returns the input unchanged. Bilinear with antialiasing.
    """
    height, width = img.shape[-2:]
    long_side = max(height, width)
    if size is None or long_side <= size:
        return img
    scale = size / long_side
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(img, size=new_size, mode="bilinear", antialias=True, align_corners=False)


def at_least(img: torch.Tensor, side: int) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,max(H,side),max(W,side)): a side below ``side`` stretched to it (bilinear), else unchanged.

    VGG16 halves its input at every pool and fails once a side reaches 0: tiny images are computed
    at the smallest size it takes, so anything that already worked gets the same numbers.
    """
    height, width = img.shape[-2:]
    if height >= side and width >= side:
        return img
    return F.interpolate(img, size=(max(height, side), max(width, side)), mode="bilinear", align_corners=False)


def _resize_to(img: torch.Tensor, size: tuple[int, int], area_when_shrinking: bool) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,*size); area averaging when no side grows (if asked), else bilinear."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrinking = img.shape[-2] >= size[0] and img.shape[-1] >= size[1]
    if area_when_shrinking and shrinking:
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)


def edge_loss(
    img: torch.Tensor, target: torch.Tensor, op: str = "sobel", size: int | None = None
) -> torch.Tensor:
    """Mean |edge_map(img) - target|.

    img (B,3,H,W) in [0,1] is first resized to long side ``size``; target (B,1,h,w) in [0,1]
    (B may be 1) is resized to the resized img's (H,W).
    """
    img = resize_long_side(img, size)
    edges = edge_map(img, op)
    target = target.to(device=edges.device, dtype=edges.dtype)
    target = _resize_to(target, tuple(edges.shape[-2:]), area_when_shrinking=True)
    return (edges - target).abs().mean()


def temporal_loss(img: torch.Tensor, prev: torch.Tensor, size: int | None = 64,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |img - prev| at long side ``size``; img and prev (B,3,H,W) in [0,1], sizes may differ.

    With ``mask`` (B,1,h,w) in [0,1] (1 = compare this pixel) the mean is taken over the masked pixels
    only: ``prev`` is then the previous frame warped onto this one, and the mask leaves out occlusions.
    """
    small = resize_long_side(img, size)
    prev = prev.to(device=small.device, dtype=small.dtype)
    prev = _resize_to(prev, tuple(small.shape[-2:]), area_when_shrinking=False)
    if mask is None:
        return (small - prev).abs().mean()
    mask = _resize_to(mask.to(device=small.device, dtype=small.dtype), tuple(small.shape[-2:]),
                      area_when_shrinking=True)
    return ((small - prev).abs() * mask).sum() / (mask.sum() * small.shape[1]).clamp(min=1)


COLOR_SIZE = 128  # long side the colour statistics are taken at: means and deviations need few pixels


def color_loss(img: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
    """Squared distance of ``img``'s per-channel CIELAB mean and deviation (each (3,)) from the targets', in
    Lab units squared: ``color_drift`` squared (``qvedit.anchor.color``). img (1, 3, H, W) in [0, 1];
    the Lab conversion is kornia's (D65, as scikit-image's)."""
    from kornia.color import rgb_to_lab

    lab = rgb_to_lab(resize_long_side(img.float(), COLOR_SIZE).clamp(0, 1)).flatten(2)[0]  # (3, pixels)
    mean, std = lab.mean(dim=1), lab.std(dim=1, unbiased=False)
    return (mean - target_mean).pow(2).sum() + (std - target_std).pow(2).sum()


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,C) Gram matrix F Fᵀ / (C·H·W) with F the (B,C,HW) flattened features."""
    b, c, h, w = feat.shape
    flat = feat.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def gram_loss(grams_pred: list[torch.Tensor], grams_ref: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of mean |G_pred - G_ref|; each list holds (B,C,C) Grams (ref B may be 1)."""
    if len(grams_pred) != len(grams_ref) or not grams_pred:
        raise ValueError(f"gram_loss needs equal non-empty lists, got {len(grams_pred)} and {len(grams_ref)}")
    return sum((gp - gr).abs().mean() for gp, gr in zip(grams_pred, grams_ref))


def _import_torchvision():
    try:
        import torchvision.models.vgg
    except ImportError:
        raise QveditError(
            "torchvision is not installed: the Gram style loss needs it; "
            "pip install torchvision (or set ttlg.gram_scale=0)"
        ) from None
    return torchvision


def vgg16_weights_path() -> Path:
    """Where torch hub caches the VGG16 ImageNet checkpoint (honours TORCH_HOME at call time)."""
    torchvision = _import_torchvision()
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _imagenet_state_dict(key: str) -> dict[str, torch.Tensor]:
    """The VGG16 ImageNet state dict, from the hub cache or downloaded into it. ``key``: the setting
    that asked for ImageNet weights, named in the error."""
    torchvision = _import_torchvision()
    path = vgg16_weights_path()
    fill_hint = (
        f"copy {path.name} into {path.parent} from a machine with internet "
        f"(or set {key}=random, for tests only)"
    )
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise QveditError(
                f"cannot read VGG16 weights {path} ({_one_line(exc)}): delete it and {fill_hint}"
            ) from exc
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except Exception as exc:
        raise QveditError(
            f"VGG16 ImageNet weights are not at {path} and downloading them failed "
            f"({_one_line(exc)}): {fill_hint}"
        ) from exc


def _truncated_features(state: dict[str, torch.Tensor], last: int) -> dict[str, torch.Tensor]:
    """The ``features.<i>.*`` entries of a full VGG16 state dict with i <= last, prefix dropped."""
    prefix = "features."
    return {
        key[len(prefix):]: value
        for key, value in state.items()
        if key.startswith(prefix) and int(key.split(".")[1]) <= last
    }


class VGGStyle(torch.nn.Module):
    """Frozen VGG16 features up to relu4_3, for Gram-matrix style losses.

    ``weights="imagenet"`` loads torchvision's IMAGENET1K_V1 checkpoint (cache first, then one
    download attempt; ``key`` is the setting an error tells to change); ``weights="random"`` gives the same seeded weights every time without
    touching the global RNG state, for tests only.
    """

    def __init__(self, weights: str = "imagenet", device: torch.device | str = "cpu", key: str = "ttlg.vgg_weights"):
        super().__init__()
        if weights not in VGG_WEIGHTS:
            raise QveditError(f"unknown VGG weights {weights!r}: set {key} to {' or '.join(VGG_WEIGHTS)}")
        torchvision = _import_torchvision()
        state = _imagenet_state_dict(key) if weights == "imagenet" else None
        vgg = torchvision.models.vgg
        # Building the layers draws their default init from the global RNG: fork it so that
        # constructing this module never shifts the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_SEED)
            self.features = vgg.make_layers(vgg.cfgs["D"])[: STYLE_LAYERS[-1] + 1]
            if state is None:
                # The init torchvision's VGG applies, so activations keep a sane scale.
                for module in self.features.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                        torch.nn.init.zeros_(module.bias)
        if state is not None:
            try:
                self.features.load_state_dict(_truncated_features(state, STYLE_LAYERS[-1]))
            except RuntimeError:
                raise QveditError(
                    f"{vgg16_weights_path()} is not a VGG16 checkpoint (its layers do not match): "
                    "delete it and copy the real vgg16-397923af.pth there"
                ) from None
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.to(device=device, dtype=torch.float32).eval()
        self.requires_grad_(False)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        """(B,3,H,W) in [0,1] -> activations at relu1_2, relu2_2, relu3_3, relu4_3, float32."""
        x = (img.to(device=self.mean.device, dtype=torch.float32) - self.mean) / self.std
        feats = []
        # Autocast would run the convolutions in half precision; the Grams need float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            for index, layer in enumerate(self.features):
                x = layer(x)
                if index in STYLE_LAYERS:
                    feats.append(x)
        return feats

    def grams(self, img: torch.Tensor, size: int | None = None) -> list[torch.Tensor]:
        """(B,3,H,W) in [0,1], any float dtype -> 4 Gram matrices (B,C,C), at long side ``size``."""
        small = resize_long_side(img.to(torch.float32), size)
        return [gram_matrix(f) for f in self(at_least(small, VGG_SMALLEST_INPUT))]


def shared_vgg(weights: str, device, key: str = "ttlg.vgg_weights") -> VGGStyle:
    """One frozen VGGStyle per (weights, device) for the process: guidance and metrics share it,
    and every job of a sweep reuses it instead of reading the checkpoint again."""
    return cache.shared(("vgg", weights, str(device)), lambda: VGGStyle(weights, device=device, key=key))
