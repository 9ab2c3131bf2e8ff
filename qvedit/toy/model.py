"""The toy edit model's components: the real ``QwenImageEditPlusPipeline`` classes at small sizes.

Qwen-Image-Edit-2509 has a 20.4 B transformer, a 7B Qwen2.5-VL text encoder and a VAE that shrinks images 8x
into 16 channels. The toy model keeps every class and the 16 latent channels (so its packed latents are (B, N, 64)
tokens like the real model's) and shrinks the rest: a VAE that shrinks images 4x (a 64x64 frame is 16x16 latents,
8x8 tokens), a 6-block transformer of width 128, and a 2-layer text encoder of width 32 whose vision tower sees
each condition image as 4 tokens. ``qvedit.toy.train`` trains the VAE and the transformer; the text encoder keeps
its seeded random weights (the transformer learns to read what it makes of each prompt). The tokenizer is the
tiny model's (``qvedit.models.tiny``): its template prefix is the 64 tokens the pipeline drops, as the real
tokenizer's is.
"""

from __future__ import annotations

import torch

LATENT_CHANNELS = 16  # as the real VAE's z_dim
VAE_BASE = 16  # channels at full resolution; dim_mult (1, 2, 4): 16, 32, 64
TEXT_WIDTH = 32
TRANSFORMER = {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32, "axes_dims_rope": (8, 12, 12)}
VISION_PIXELS = 112 * 112  # the vision tower's input area per condition image: 4 tokens after merging


def build_vae():
    """``AutoencoderKLQwenImage`` at toy size, seeded: 4x smaller images, 16 latent channels."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    return AutoencoderKLQwenImage(base_dim=VAE_BASE, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True], latents_mean=[0.0] * LATENT_CHANNELS,
                                  latents_std=[1.0] * LATENT_CHANNELS)


def build_transformer():
    """``QwenImageTransformer2DModel`` at toy size, seeded; it reads (B, N, 64) packed latents like the real one."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                       joint_attention_dim=TEXT_WIDTH, guidance_embeds=False, **TRANSFORMER)


def build_text_side():
    """(text encoder, tokenizer, processor): a seeded 2-layer Qwen2.5-VL of width 32 and the tiny model's tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from qvedit.models.tiny import SPECIAL_TOKENS, _train_tokenizer

    tokenizer = _train_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "vocab_size": len(tokenizer), "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"]},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": TEXT_WIDTH},
        hidden_size=TEXT_WIDTH, vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], vision_token_id=ids["<|image_pad|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"])
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=VISION_PIXELS,
                                                                       max_pixels=VISION_PIXELS),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    return text_encoder, tokenizer, processor


def build_scheduler():
    """The flow-matching scheduler the toy model is trained and sampled with (the tiny model's settings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192,
                                           max_shift=0.9, shift=1.0, shift_terminal=0.02, use_dynamic_shifting=True,
                                           time_shift_type="exponential")


def build_pipeline(vae=None, transformer=None):
    """A ``QwenImageEditPlusPipeline`` of toy components (the given VAE and transformer, or fresh seeded ones)."""
    from diffusers import QwenImageEditPlusPipeline

    text_encoder, tokenizer, processor = build_text_side()
    return QwenImageEditPlusPipeline(transformer=transformer or build_transformer(), vae=vae or build_vae(),
                                     scheduler=build_scheduler(), text_encoder=text_encoder.eval(),
                                     tokenizer=tokenizer, processor=processor)
