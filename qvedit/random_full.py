"""``model=random_full``: the full Qwen-Image-Edit-2509 architecture with random weights, for timing.

Timing and memory do not depend on weight values, so the real architecture with random weights
measures what the real model costs without a download. Every component is created directly on
the GPU in bf16 (20.4 B transformer parameters: a float32 copy first would need 80 GB of host
memory). The images it makes mean nothing; every report that uses it says "random weights".
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from qvedit.errors import QveditError

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random weights, timing only"


@contextlib.contextmanager
def created_as(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Inside the block, new tensors (module parameters too) are made on ``device`` in ``dtype``."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(saved)


def build_random_full_pipeline(device: str = "cuda", dtype: str = "bf16", seed: int = 0):
    """A ``QwenImageEditPlusPipeline`` of full size with random weights, frozen, on ``device``.

    Transformer and VAE are the diffusers defaults (the 2509 architectures); the text encoder is
    ``Qwen2_5_VLConfig()`` (Qwen2.5-VL-7B); tokenizer and processor are the tiny model's offline
    ones, with the special-token ids wired into the text encoder's config.
    """
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qvedit.pipeline import check_device, torch_dtype
    from qvedit.tiny_model import SPECIAL_TOKENS, build_tiny_components

    check_device(device)
    if not device.startswith("cuda"):
        raise QveditError("model=random_full needs a GPU (about 60 GB in bf16): pass device=cuda")
    tiny = build_tiny_components()
    tokenizer, processor = tiny["tokenizer"], tiny["processor"]
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig()
    for node in (config, config.text_config):
        for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
            setattr(node, name, ids[token])
    torch.manual_seed(seed)
    with created_as(device, torch_dtype(dtype)):
        transformer = QwenImageTransformer2DModel()
        vae = AutoencoderKLQwenImage()
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    pipe = QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
        scheduler=tiny["scheduler"],
    )
    log.info("built model=random_full on %s (%s): %s", device, dtype, RANDOM_WEIGHTS)
    return pipe
