"""``model=random_full`` (``random_full_21``): the full Qwen-Image-Edit-2509 (Qwen-Image 2.1) architecture with
random weights, for timing.

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

from qvedit.core.errors import QveditError
from qvedit.models.devices import check_device, torch_dtype

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


def qwen2_5_vl_7b_config():
    """The text encoder of Qwen-Image-Edit-2509: Qwen2.5-VL-7B (its published config.json values).

    ``Qwen2_5_VLConfig()`` with defaults is not it: in transformers 5 the default text model is the
    72B one (hidden 8192, 80 layers; 75.8 B parameters), which does not even fit the GPU.
    """
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                     "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": [16, 24, 24]}},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
        vocab_size=152064, tie_word_embeddings=False,
    )


def qwen3_vl_8b_config():
    """The text encoder of Qwen-Image 2.1: Qwen3-VL-8B (the values of Qwen/Qwen3-VL-8B-Instruct's config.json as
    recalled here; not re-read offline: they set the timing, and the transformer's ``context_in_dim`` 4096 is this
    model's hidden size). ``Qwen3VLConfig()`` with defaults is a 32-layer text model with another MLP width."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                     "max_position_embeddings": 262144,
                     "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                         "mrope_interleaved": True}},
        vision_config={"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                       "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
        tie_word_embeddings=False)


# the text encoder config's fields that hold the ids of the tokenizer's special tokens
TOKEN_ID_FIELDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                   "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def set_token_ids(config, tokenizer) -> None:
    """Wire ``tokenizer``'s special-token ids into a text encoder ``config`` (``TOKEN_ID_FIELDS``)."""
    for name, token in TOKEN_ID_FIELDS.items():
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))


def build_random_full_pipeline(device: str = "cuda", dtype: str = "bf16", seed: int = 0,
                               family: str = "qwen_edit_plus"):
    """A pipeline of full size with random weights, frozen, on ``device``: ``QwenImageEditPlusPipeline`` (``family``
    ``qwen_edit_plus``) or ``QwenImage21Pipeline`` (``qwen_image_21``).

    Transformer and VAE are the diffusers defaults (the 2509 architectures; 2.1's 7B transformer and its VAE);
    the text encoder is Qwen2.5-VL-7B (``qwen2_5_vl_7b_config``; 2.1: Qwen3-VL-8B, ``qwen3_vl_8b_config``);
    tokenizer and processor are the tiny model's offline ones, with the special-token ids wired into the text
    encoder's config.
    """
    check_device(device)
    if not device.startswith("cuda"):
        raise QveditError(f"model=random_full{'_21' if family == 'qwen_image_21' else ''} needs a GPU (about "
                          f"{40 if family == 'qwen_image_21' else 60} GB in bf16): pass device=cuda")
    if family == "qwen_image_21":
        return build_random_full_21(device, dtype, seed)
    from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from qvedit.models.tiny import build_tiny_components

    tiny = build_tiny_components()
    tokenizer, processor = tiny["tokenizer"], tiny["processor"]
    config = qwen2_5_vl_7b_config()
    for node in (config, config.text_config):
        set_token_ids(node, tokenizer)
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


def build_random_full_21(device: str, dtype: str, seed: int = 0):
    """``build_random_full_pipeline`` for Qwen-Image 2.1."""
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Pipeline, QwenImage21Transformer2DModel
    from transformers import Qwen3VLForConditionalGeneration

    from qvedit.models.tiny21 import build_tiny_21_components

    tiny = build_tiny_21_components()
    processor = tiny["processor"]
    config = qwen3_vl_8b_config()
    set_token_ids(config, processor.tokenizer)
    torch.manual_seed(seed)
    with created_as(device, torch_dtype(dtype)):
        transformer = QwenImage21Transformer2DModel()
        vae = AutoencoderKLQwenImage21()
        text_encoder = Qwen3VLForConditionalGeneration(config)
    pipe = QwenImage21Pipeline(transformer=transformer, vae=vae, text_encoder=text_encoder, processor=processor,
                               scheduler=tiny["scheduler"])
    log.info("built model=random_full_21 on %s (%s): %s", device, dtype, RANDOM_WEIGHTS)
    return pipe
