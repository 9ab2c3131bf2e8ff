"""CLIP frame consistency: cosine similarity of the CLIP image embeddings of consecutive frames.

The metric video-editing papers report beside the warp error. It needs ``open_clip`` (``pip install
-e .[clip]``) and the weights of ``MODEL`` / ``PRETRAINED`` in the Hugging Face hub cache (downloaded
once where there is a network); without either the ``clip_consistency`` column is left out with one
warning, as the LPIPS columns are without ``lpips``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from PIL import Image

from qvedit.models import cache

log = logging.getLogger(__name__)

MODEL, PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


class ClipEmbedder:
    """``embed(image)`` -> the unit-length CLIP embedding (D,) of an 8-bit RGB PIL image."""

    def __init__(self, model: torch.nn.Module, preprocess, device: str):
        self.model, self.preprocess, self.device = model.to(device).eval(), preprocess, device

    @torch.no_grad()
    def embed(self, image: Image.Image) -> torch.Tensor:
        features = self.model.encode_image(self.preprocess(image)[None].to(self.device))[0].float()
        return features / features.norm().clamp(min=1e-12)

    def consistency(self, frame: Image.Image, previous: Image.Image) -> float:
        """Cosine similarity of the two frames' embeddings, in [-1, 1]."""
        return float(self.embed(frame) @ self.embed(previous))


def load_clip(device: str) -> Optional[ClipEmbedder]:
    """The CLIP embedder, or None (with one warning per process) when open_clip or its weights are missing."""
    return cache.shared(("clip", device), lambda: _build_clip(device))


def _build_clip(device: str) -> Optional[ClipEmbedder]:
    try:
        import open_clip
    except ImportError:
        log.warning("open_clip is not installed: clip_consistency is skipped (pip install -e .[clip])")
        return None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=PRETRAINED)
    except Exception as err:  # offline without the weights in the hub cache, most often
        log.warning("CLIP weights %s/%s are not available (%s: %s): clip_consistency is skipped", MODEL, PRETRAINED,
                    type(err).__name__, " ".join(str(err).split())[:160])
        return None
    return ClipEmbedder(model, preprocess, device)
