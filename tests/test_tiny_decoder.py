"""ttlg.decoder=tiny: taehv's tiny decoder (qvedit/guidance/tiny_decoder.py) for the guidance decode, checked on
what can be checked without the published weights: shapes, value range, gradients, loading, guidance."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from qvedit.core.errors import QveditError
from qvedit.guidance import losses, tiny_decoder
from qvedit.guidance.edges import image_to_edge_target
from qvedit.guidance.guide import Guide
from qvedit.guidance.tiny_decoder import TinyDecoder, check_decoder, checked_file, load_weights, random_decoder
from qvedit.models.diffusers_compat import LatentDecoder, condition_area, record_velocity
from qvedit.settings.guidance import TTLGSettings


def published_layout(model: TinyDecoder) -> dict:
    """``model``'s weights as the published taew2_1 file holds them: the encoder beside the decoder, and the
    time-upsampling layers of stages 2 and 3 with two time steps' rows (the last ones are ``model``'s)."""
    state = {name: t.clone() for name, t in model.state_dict().items()}
    for name in ("decoder.13.conv.weight", "decoder.19.conv.weight"):
        state[name] = torch.cat([torch.randn_like(state[name]), state[name]])
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    state["encoder.0.bias"] = torch.randn(64)
    return state


def test_shapes_and_range_for_qwen_image_and_for_the_tiny_model():
    """taew2_1: 16 channels, 8x like the Qwen-Image VAE; the tiny test model's VAE: 4 channels, 4x."""
    for channels, stages, scale in ((16, 3, 8), (4, 2, 4)):
        image = random_decoder(channels, stages)(torch.randn(2, channels, 6, 10) * 3)
        assert image.shape == (2, 3, 6 * scale, 10 * scale)
        assert 0 <= image.min() and image.max() <= 1 and 0.2 < image.mean() < 0.8 and image.std() > 0.05
    assert set(TinyDecoder().state_dict()) == set(TinyDecoder(4, 2).state_dict())  # the same names, other shapes


def test_a_frame_without_a_past_is_taehvs_memory_block_with_zero_memory():
    block = tiny_decoder.MemBlock(8)
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        full = torch.relu(block.conv(torch.cat([x, torch.zeros_like(x)], 1)) + x)  # taehv: conv(cat(x, past)) + skip
        torch.testing.assert_close(block(x), full, atol=1e-5, rtol=1e-5)


def test_the_gradient_reaches_every_latent():
    latents = torch.randn(1, 4, 12, 16, requires_grad=True)
    image = random_decoder(4, 2)(latents)
    (grad,) = torch.autograd.grad(losses.edge_loss(image, torch.rand(1, 1, 48, 64)), latents)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.99


def test_a_seventh_of_the_vaes_decoder():
    from diffusers import AutoencoderKLQwenImage

    with torch.device("meta"):
        vae = AutoencoderKLQwenImage()  # the full Qwen-Image VAE
    tiny = sum(p.numel() for p in TinyDecoder().parameters())
    assert 9e6 < tiny < sum(p.numel() for p in vae.decoder.parameters()) / 7  # 9.8 M against 73.3 M


def test_guidance_decodes_the_latents_as_the_model_makes_them(tiny_pipe):
    """No de-normalisation before the tiny decoder (taehv uses none), one frame, the image in [0, 1]."""
    model = random_decoder(4, 2)
    decoder = LatentDecoder(tiny_pipe, 48, 64, tiny=model)
    decoder.mean = torch.full_like(decoder.mean, 5.0)  # what the VAE path would add: the tiny path ignores it
    latents = torch.randn(1, 6 * 8, 16)  # packed: the tiny VAE's 12x16 latents of 4 channels in 2x2 patches
    unpacked = tiny_pipe._unpack_latents(latents, 48, 64, tiny_pipe.vae_scale_factor)[:, :, 0]
    torch.testing.assert_close(decoder.decode(latents), model(unpacked))
    smaller = LatentDecoder(tiny_pipe, 48, 64, long_side=32, tiny=model).decode(latents)
    assert smaller.shape == (1, 3, 24, 32)


def test_a_saved_state_dict_loads_and_a_mismatching_one_names_the_file_and_key(tmp_path):
    original = random_decoder(16, 3)
    good = tmp_path / "taew2_1.safetensors"
    save_file(published_layout(original), good)
    assert checked_file(str(tmp_path)) == good  # a folder holding taew2_1.safetensors
    loaded = TinyDecoder()
    load_weights(loaded, checked_file(str(good)))
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    wide = published_layout(original)
    wide["decoder.1.weight"] = torch.randn(256, 48, 3, 3)  # taew2_2's 48 latent channels
    missing = {k: v for k, v in published_layout(original).items() if k != "decoder.22.bias"}
    extra = {**published_layout(original), "decoder.1.conv.0.weight": torch.randn(8, 8, 1, 1)}  # a "super" decoder
    for name, state, fragment in (("wide", wide, "decoder.1.weight has shape [256, 48, 3, 3] where the decoder "
                                                 "takes [256, 16, 3, 3]"),
                                  ("missing", missing, "it has no decoder.22.bias"),
                                  ("extra", extra, "decoder.1.conv.0.weight is no parameter")):
        save_file(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(QveditError, match=re.escape(f"{name}.safetensors does not hold the taew2_1 tiny "
                                                        f"decoder: {fragment}")):
            checked_file(str(tmp_path / f"{name}.safetensors"))
    (tmp_path / "taew2_1.pth").write_bytes(b"pickle")
    with pytest.raises(QveditError, match="safetensors only"):
        checked_file(str(tmp_path / "taew2_1.pth"))
    with pytest.raises(QveditError, match="ttlg.decoder=tiny needs its weights"):
        check_decoder(TTLGSettings(edge_scale=1.0, decoder="tiny"))


def test_a_folder_where_the_weights_file_should_be_is_one_line(tmp_path):
    (tmp_path / "taew2_1.safetensors").mkdir()  # a folder with the weights' name, nothing else
    with pytest.raises(QveditError, match=r"holds no .safetensors file \(taew2_1.safetensors there is a folder\)"):
        checked_file(str(tmp_path))
    save_file(published_layout(random_decoder(16, 3)), tmp_path / "other.safetensors")
    assert checked_file(str(tmp_path)) == tmp_path / "other.safetensors"  # the one file there


def test_a_file_for_qwen_image_on_a_model_with_other_latents_is_one_line(tiny_pipe, tmp_path):
    save_file(published_layout(random_decoder(16, 3)), tmp_path / "taew2_1.safetensors")
    with pytest.raises(QveditError, match="decodes 16-channel latents 8x .* VAE makes 4-channel latents and upsamples "
                                          "4x: use ttlg.tiny_decoder=random"):
        tiny_decoder.tiny_decoder(str(tmp_path), tiny_pipe.vae, tiny_pipe.vae_scale_factor, torch.device("cpu"))


def test_guidance_through_the_tiny_decoder_lowers_the_edge_loss_it_sees(tiny_pipe):
    """ttlg.decoder=tiny on the tiny model (random tiny weights): guided latents decode, through the tiny
    decoder, to an image whose edge loss is lower than the unguided latents'."""
    size, steps = (48, 64), 4
    image = Image.new("RGB", (size[1], size[0]), (120, 60, 30))
    edge_target = image_to_edge_target(Image.fromarray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)))
    settings = TTLGSettings(edge_scale=1.0, decoder="tiny", tiny_decoder="random", lr=0.2, last_steps=None)
    guide = Guide(settings, tiny_pipe, torch.rand(1, 3, *size))

    def final_latents(guided: bool) -> torch.Tensor:
        with condition_area(size[0] * size[1]), record_velocity(tiny_pipe.scheduler) as velocity:
            callback = guide.callback(1, edge_target, *size, steps, velocity) if guided else None
            return tiny_pipe(image=[image, image], prompt="p", negative_prompt=" ", true_cfg_scale=4.0,
                             num_inference_steps=steps, height=size[0], width=size[1], output_type="latent",
                             generator=torch.Generator().manual_seed(0), callback_on_step_end=callback).images

    seen = LatentDecoder(tiny_pipe, *size, tiny=guide.tiny)
    off, on = (float(losses.edge_loss(seen.decode(final_latents(guided)), edge_target)) for guided in (False, True))
    assert guide.guided_steps == steps
    assert on < 0.9 * off
