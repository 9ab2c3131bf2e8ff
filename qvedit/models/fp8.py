"""``perf.quantize=fp8``: FP8 matmuls for the transformer's linear layers (torchao), a few kept in bf16.

Each selected ``nn.Linear`` gets torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``:
weights stored in float8 e4m3 with one scale per output row, activations quantized per row at run time,
the product by ``torch._scaled_mm`` (FP8 tensor cores: compute capability 8.9 or newer, Ada / Hopper /
Blackwell). Eager FP8 is slower than bf16 (the quantize kernels are separate launches); compiled with
the blocks (``perf.compile``, the ``perf=fp8`` preset) they fuse.

Which layers stay in bf16 (``perf.fp8_keep_bf16``, fnmatch patterns over the transformer's module names;
default ``qvedit.settings.model.FP8_KEEP_BF16``, SGLang's validated FP8 fallback set for Qwen-Image and
Qwen-Image-Edit, both ``QwenImageTransformer2DModel``):

- ``img_in``, ``txt_in``: the input projections of the raw latent patches and the text encoder's
  features, whose ranges nothing has normalised yet; one matmul per token per pass, not per block.
- ``time_text_embed.*``: the timestep embedder, one vector per pass: nothing to gain.
- ``*.img_mod.*``, ``*.txt_mod.*``: each block's AdaLN modulation (shift, scale, gate from the timestep
  embedding). One vector per sample, so matrix-vector products that FP8 cannot speed up, while their
  error scales every token of the block. They are a third of the parameters (2 x 3072 x 18432 per
  block): keeping them costs memory (about 13 GB of bf16), not time.
- ``*.img_mlp.net.2``: the image-stream MLP's down projection, kept after SGLang's image-quality
  ablation (sgl-project/sglang PR 23155). vLLM-Omni keeps the whole ``img_mlp`` of Qwen-Image in bf16
  for the same reason (its FP8 guide: the image-stream MLPs see latent ranges that shift over the
  timesteps with no normalisation behind them, and errors compound over 60 blocks). It is a third of
  the image tokens' linear FLOPs, the one kept layer that costs speed: dropping it from the list is
  the faster and riskier choice.
- ``norm_out.*``, ``proj_out``: the final modulation and the projection to the velocity the scheduler
  integrates.

vLLM-Omni's first Qwen-Image FP8 (only ``img_mlp`` skipped) measured LPIPS 0.39 against bf16 and, with
the embedding, modulation and output layers also left unquantized (vllm-project/vllm-omni PR 2795),
0.17. SGLang's NVFP4 exports also keep the first and last blocks; for FP8 its preset does not, and
``transformer_blocks.0.*`` / ``transformer_blocks.59.*`` can be added to the list.

Qwen-Image 2.1 (``QwenImage21Transformer2DModel``, 32 single-stream blocks) has other module names; its presets
(``model=qwen_image_21``, ``random_full_21``) keep the same kinds of layers in bf16 by analogy, not by a published
ablation (none was found for 2.1): ``img_in``, ``txt_in.*`` (its text projection), ``time_text_embed.*``,
``modulation.*`` (the one modulation all blocks share: a vector per pass), ``norm_out.*``, ``proj_out``, and each
block's MLP down projection ``*.img_mlp.out`` (2509's ``img_mlp.net.2``). Its image quality under FP8 was not seen.

Guidance does not differentiate through the transformer: ``Guide`` takes the latents as a fresh leaf
and the velocity detached, and backpropagates only through the VAE decode of x0, and the VAE is not
quantized. FP8 changes the velocity the scheduler integrates, not how the guidance step is taken.
"""

from __future__ import annotations

import logging
import sys
from fnmatch import fnmatchcase
from typing import Iterable

import torch

from qvedit.core.errors import QveditError
from qvedit.settings.model import FP8_KEEP_BF16

log = logging.getLogger(__name__)

FP8_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer
INSTALL = "pip install 'qvedit[fp8]'"


def keeps_bf16(name: str, patterns: Iterable[str] = FP8_KEEP_BF16) -> bool:
    """Whether the module called ``name`` (``transformer_blocks.3.img_mlp.net.2``) matches a keep pattern."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def fp8_layer_filter(name: str, module: torch.nn.Module, patterns: Iterable[str] = FP8_KEEP_BF16) -> bool:
    """Whether the module ``name`` gets FP8 matmuls: a Linear that no pattern keeps in bf16, with both
    sides a multiple of 16 (what ``torch._scaled_mm`` takes)."""
    return (isinstance(module, torch.nn.Linear) and not keeps_bf16(name, patterns)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def fp8_layers(transformer: torch.nn.Module, patterns: Iterable[str] = FP8_KEEP_BF16) -> dict[str, list[str]]:
    """{"fp8": names, "bf16": names} of the transformer's Linear layers, as ``quantize_fp8`` splits them."""
    patterns = tuple(patterns)
    split = {"fp8": [], "bf16": []}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            split["fp8" if fp8_layer_filter(name, module, patterns) else "bf16"].append(name)
    return split


def torchao_only_for_fp8(quantize) -> None:
    """Keep torchao out of a process that does not quantize (``perf.quantize`` other than fp8).

    Where torchao is installed (the fp8 and test extras), transformers imports it with its quantizers
    when the model loads, and torchao's import prints warnings (torch's ``register_constant`` deprecation
    for its enums, "Unable to import torchao Tensor objects") on every run. Marking it absent in
    ``sys.modules`` before diffusers or transformers are imported makes both see it as not installed;
    a process that imported them already (a test session) is left as it is, so they never see two answers.
    An fp8 job later in the same process (a sweep) takes the mark away and imports torchao itself.
    """
    if quantize == "fp8":
        if "torchao" in sys.modules and sys.modules["torchao"] is None:
            del sys.modules["torchao"]
    elif not any(name in sys.modules for name in ("torchao", "diffusers", "transformers")):
        sys.modules["torchao"] = None


def torchao_fp8():
    """(``quantize_``, the config) from torchao, or one line naming the extra to install."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as err:  # not installed, or built for another torch
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise QveditError(f"perf.quantize=fp8 needs torchao's float8 quantization ({reason}): {INSTALL}") from None
    return quantize_, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def check_fp8(device: str, dtype: str) -> None:
    """Refuse FP8 where it cannot run, before the model loads: the CPU, older GPUs, dtypes other than bf16,
    a missing torchao."""
    if not device.startswith("cuda"):
        raise QveditError(f"perf.quantize=fp8 needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9: "
                          f"Ada, Hopper or newer), and device={device}: use perf=default here")
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(torch.device(device))
        raise QveditError(f"perf.quantize=fp8 needs FP8 tensor cores (compute capability >= 8.9: Ada, Hopper or "
                          f"newer); {name} on {device} is {capability[0]}.{capability[1]}: use perf=fast (compile, "
                          "bf16) instead")
    if dtype != "bf16":
        raise QveditError(f"perf.quantize=fp8 computes row-scaled FP8 products in bf16, and dtype={dtype}: pass "
                          "dtype=bf16")
    torchao_fp8()


def quantize_fp8(transformer: torch.nn.Module, patterns: Iterable[str], device: str) -> list[str]:
    """Give the selected Linear layers of ``transformer`` FP8 weights and matmuls, moving each to ``device``
    as it is quantized; returns their names. The transformer may wait in CPU memory: only one layer is
    on the GPU in bf16 at a time."""
    quantize_, config = torchao_fp8()
    patterns = tuple(patterns)
    split = fp8_layers(transformer, patterns)
    quantize_(transformer, config, filter_fn=lambda module, name: fp8_layer_filter(name, module, patterns),
              device=device)
    transformer.to(device)  # what stays in bf16
    log.info("perf.quantize=fp8: %d linear layers in fp8, %d kept in bf16 (perf.fp8_keep_bf16)",
             len(split["fp8"]), len(split["bf16"]))
    return split["fp8"]
