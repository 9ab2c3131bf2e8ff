"""The tiny offline Qwen-Image 2.1 (``model=tiny_21``): every ``QwenImage21Pipeline`` component at toy size, random
weights, built like the tiny 2509 model (``qvedit.models.tiny``: seeded, written with ``save_pretrained``, loaded
back through ``from_pretrained``), nothing downloaded.

Its sizes follow what the pipeline assumes (diffusers' own tiny test of the pipeline takes the same values):

- the VAE compresses 16x (five ``dim_mult`` stages: four downsamplings), since the pipeline fixes
  ``vae_scale_factor = 16``; 8 latent channels, not 4, since the pipeline takes a 4-channel condition image (RGBA)
  for latents when the VAE's channels are 4;
- the Qwen3-VL vision tower's merged token covers 32x32 pixels (patch 16, merge 2): the transformer expands each
  vision slot of the text sequence into the 2x2 latent tokens of the same pixels;
- its image processor leaves every condition image qvedit makes as it is (min 32x32, max 4096x4096 pixels);
- the processor carries a chat template, from which the pipeline counts the system prompt's tokens to drop.

The tokenizer is the tiny 2509 model's (a byte-level BPE trained in code with the Qwen special tokens).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from qvedit.core.files import atomic_folder
from qvedit.models.tiny import SPECIAL_TOKENS, _train_tokenizer, tiny_scheduler

# The Qwen chat format (ChatML) for text parts: what the pipeline's own hand-written prompt template matches.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
Z_DIM, TEXT_DIM = 8, 16


def build_tiny_21_components() -> dict:
    """All five ``QwenImage21Pipeline`` components, seeded, on the CPU in float32."""
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = _train_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    torch.manual_seed(0)
    transformer = QwenImage21Transformer2DModel(
        patch_size=1, in_channels=Z_DIM, out_channels=Z_DIM, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=TEXT_DIM, mlp_ratio=2, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage21(
        base_dim=4, decoder_base_dim=4, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True, True], latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM)
    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config={"hidden_size": TEXT_DIM, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "head_dim": 8, "vocab_size": len(tokenizer),
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": TEXT_DIM, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text_encoder = Qwen3VLForConditionalGeneration(config).eval()
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                              max_pixels=4096 * 4096),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        chat_template=CHAT_TEMPLATE)
    return {"transformer": transformer, "vae": vae, "scheduler": tiny_scheduler(), "text_encoder": text_encoder,
            "processor": processor}


def build_tiny_21_model(folder: str | os.PathLike) -> Path:
    """Write the tiny 2.1 pipeline to ``folder`` (atomically: a half-built folder never appears)."""
    from diffusers import QwenImage21Pipeline

    folder = Path(folder).expanduser()
    with atomic_folder(folder, complete="model_index.json") as staging:
        QwenImage21Pipeline(**build_tiny_21_components()).save_pretrained(staging)
    return folder
