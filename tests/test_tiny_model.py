"""The tiny offline model: built without a network, byte-identical on every build, loaded like the real one."""

from pathlib import Path

from diffusers import QwenImageEditPlusPipeline

from qvedit.core.files import PARTIAL_GLOB
from qvedit.models.tiny import SPECIAL_TOKENS, build_tiny_model
from tests.conftest import TINY_MODEL


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_code_same_bytes(tiny_pipe, tmp_path):
    again = build_tiny_model(tmp_path / "tiny")
    first, second = files(Path(TINY_MODEL)), files(again)
    assert sorted(first) == sorted(second)
    assert {"model_index.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
            "text_encoder/model.safetensors", "tokenizer/tokenizer.json"} <= set(first)
    assert [name for name in first if first[name] != second[name]] == []
    assert not list(tmp_path.glob(PARTIAL_GLOB))  # no staging folder left behind


def test_loads_through_from_pretrained_with_every_component(tiny_pipe):
    assert isinstance(tiny_pipe, QwenImageEditPlusPipeline)
    assert set(tiny_pipe.components) == {"transformer", "vae", "scheduler", "text_encoder", "tokenizer", "processor"}
    vocab = tiny_pipe.tokenizer.get_vocab()
    assert all(token in vocab for token in SPECIAL_TOKENS)
    config = tiny_pipe.text_encoder.config
    assert config.image_token_id == vocab["<|image_pad|>"]
    assert config.vision_start_token_id == vocab["<|vision_start|>"]


def test_the_tiny_21_model_is_the_same_bytes_on_every_build_and_loads_with_its_qwen3_vl_encoder(tiny_21_pipe,
                                                                                               tmp_path):
    """model=tiny_21: every QwenImage21Pipeline component at toy size, a Qwen3-VL text encoder and its processor
    (chat template included) among them, built offline the same way twice and loaded back through from_pretrained."""
    from diffusers import QwenImage21Pipeline
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    from qvedit.models.tiny21 import build_tiny_21_model
    from tests.conftest import TINY_21_MODEL

    again = build_tiny_21_model(tmp_path / "tiny21")
    first, second = files(Path(TINY_21_MODEL)), files(again)
    assert sorted(first) == sorted(second) and [name for name in first if first[name] != second[name]] == []
    assert {"model_index.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
            "text_encoder/model.safetensors", "processor/chat_template.jinja"} <= set(first)
    assert isinstance(tiny_21_pipe, QwenImage21Pipeline)
    assert isinstance(tiny_21_pipe.text_encoder, Qwen3VLForConditionalGeneration)
    assert isinstance(tiny_21_pipe.processor, Qwen3VLProcessor)
    vocab = tiny_21_pipe.processor.tokenizer.get_vocab()
    assert tiny_21_pipe.text_encoder.config.image_token_id == vocab["<|image_pad|>"] == tiny_21_pipe._img_token_id
    assert tiny_21_pipe._drop_idx > 0  # the system prompt's tokens, counted through the chat template
    assert tiny_21_pipe.vae_scale_factor == 16 and tiny_21_pipe.vae.config.z_dim == 8
